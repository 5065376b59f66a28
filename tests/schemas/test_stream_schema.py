"""The spec side of streamed sources (`cache: false`): which sources may stream, where a refusal
points, and that specs without the field keep their hash."""

from __future__ import annotations

import pytest

from schema_texts import MINIMAL
from tabula.schemas.canonical import canonical_yaml, spec_hash
from tabula.schemas.errors import SpecErrors
from tabula.schemas.loader import load_spec_text

STDLIB = "    stdlib: {kind: python_stdlib}\n"


def with_source(line: str, extra: str = "") -> str:
    return MINIMAL.replace(STDLIB, STDLIB + f"    web: {line}\n" + extra)


def test_jsonl_and_hub_sources_may_stream_and_the_default_keeps_old_hashes():
    spec = load_spec_text(with_source("{kind: files, paths: [web/*.jsonl], format: jsonl, cache: false}",
                                      "    hub: {kind: hub, name: org/corpus, cache: false}\n  stream_workers: 2\n"))
    assert spec.data.streamed_sources == ["web", "hub"] and spec.data.stream_workers == 2
    assert load_spec_text(canonical_yaml(spec)) == spec
    cached = load_spec_text(with_source("{kind: files, paths: [web/*.jsonl], format: jsonl}"))
    written = load_spec_text(with_source("{kind: files, paths: [web/*.jsonl], format: jsonl, cache: true}", "  stream_workers: 1\n"))
    assert "cache" not in canonical_yaml(cached) and "stream_workers" not in canonical_yaml(cached)
    assert spec_hash(cached) == spec_hash(written) and cached.data.streamed_sources == []


@pytest.mark.parametrize(("source", "extra", "path", "message"), [
    ("{kind: files, paths: [a.txt], cache: false}", "", "data.sources.web.cache", "format: jsonl or parquet"),
    ("{kind: files, paths: [a.jsonl], format: jsonl, cache: false, records: {kind: chat}}", "  packing: {document_masking: true}\n",
     "data.sources.web.cache", "chat records are cached"),
    ("{kind: python_stdlib, cache: false}", "", "data.sources.web.cache", "unknown key 'cache'"),
    ("{kind: files, paths: [a.jsonl], format: jsonl, cache: false}", "  mixture: {kind: temperature, mix_temperature: 2}\n",
     "data.mixture.kind", "source 'web' streams"),
])
def test_a_source_that_cannot_stream_is_refused_at_its_path(source, extra, path, message):
    with pytest.raises(SpecErrors) as raised:
        load_spec_text(with_source(source, extra))
    errors = raised.value.errors
    assert any(error.dotted_path.startswith(path) and message in error.message for error in errors), [(e.dotted_path, e.message) for e in errors]
