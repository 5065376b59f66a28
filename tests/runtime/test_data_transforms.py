"""data.transforms: fill-in-the-middle, span corruption and noise, deterministic per document and seed."""

from __future__ import annotations

import re

import numpy as np
import pytest
from data_helpers import document, make_spec, write_texts

from tabula.runtime.data import prepare
from tabula.runtime.data.transforms import TRANSFORMS, Augmenter, fim_pieces
from tabula.schemas.data import FimTransform, NoiseTransform, SpanCorruptionTransform

FIM = FimTransform(kind="fim", rate=1.0)
TEXTS = ["def add(a, b):\n    return a + b\n", "x", "", "  leading space and a tail  ", "héllo wörld ünïcode " * 5]


def test_every_transform_is_a_registry_entry():
    assert {"fim", "span_corruption", "noise"} <= set(TRANSFORMS.kinds())


@pytest.mark.parametrize("spm_rate", [0.0, 1.0, 0.5])
def test_fim_pieces_rejoin_into_the_document(spm_rate):
    spec = FimTransform(kind="fim", rate=1.0, spm_rate=spm_rate)
    forms = []
    for seed in range(60):
        for text in TEXTS[:2] + TEXTS[3:]:
            out = TRANSFORMS["fim"].apply(spec, text, np.random.default_rng(seed))
            prefix, middle, suffix = fim_pieces(spec, out)
            assert prefix + middle + suffix == text
            assert out.count(spec.prefix_token) == out.count(spec.suffix_token) == out.count(spec.middle_token) == 1
            if len(text) > 20:  # else PSM with an empty prefix (the same text as SPM) is common
                forms.append(out.startswith(spec.prefix_token + spec.suffix_token))
    assert np.mean(forms) == pytest.approx(spm_rate, abs=0.1) if spm_rate < 1 else all(forms)
    assert TRANSFORMS["fim"].apply(spec, "", np.random.default_rng(0)) is None
    assert TRANSFORMS["fim"].apply(spec, "a <|fim_middle|> b", np.random.default_rng(0)) is None  # its own token: left alone


def test_span_corruption_writes_spans_that_restore_the_document():
    spec = SpanCorruptionTransform(kind="span_corruption", rate=1.0, noise_density=0.3, mean_span_words=2.0)
    text = " ".join(f"w{i}" for i in range(40)) + "\n"
    out = TRANSFORMS["span_corruption"].apply(spec, text, np.random.default_rng(3))
    corrupted, targets = out.split(spec.separator_token)
    spans = dict(re.findall(r"<\|span_(\d+)\|>((?:(?!<\|span_).)*)", targets, flags=re.S))
    restored = re.sub(r"<\|span_(\d+)\|>", lambda m: spans[m.group(1)], corrupted)
    assert restored == text and len(spans) == 6  # 12 noise words in spans of 2
    assert sum(len(s.split()) for s in spans.values()) == 12
    assert TRANSFORMS["span_corruption"].apply(spec, "one", np.random.default_rng(0)) is None


def test_noise_rates_and_determinism():
    text = " ".join(f"word{i}" for i in range(2000))
    spec = NoiseTransform(kind="noise", rate=1.0, word_dropout=0.1, case=0.2)
    out = TRANSFORMS["noise"].apply(spec, text, np.random.default_rng(1))
    assert out == TRANSFORMS["noise"].apply(spec, text, np.random.default_rng(1))
    words = out.split()
    assert len(words) / 2000 == pytest.approx(0.9, abs=0.03)
    assert sum(w.startswith("WORD") for w in words) / len(words) == pytest.approx(0.2, abs=0.03)
    spaces = NoiseTransform(kind="noise", rate=1.0, whitespace=0.5)
    changed = TRANSFORMS["noise"].apply(spaces, text, np.random.default_rng(2))
    assert changed.replace(" ", "") == text.replace(" ", "") and changed != text
    with pytest.raises(ValueError, match="at least one"):
        NoiseTransform(kind="noise")


def test_augmenter_is_deterministic_per_document_and_seed():
    spec = [FimTransform(kind="fim", rate=0.5), NoiseTransform(kind="noise", rate=0.5, case=0.5, sources=["b"])]
    first, second, other = (Augmenter(spec, seed, ["a", "b"]) for seed in (1, 1, 2))
    texts = [f"document number {i} with some words" for i in range(200)]
    a = [first.apply("a", i, t) for i, t in enumerate(texts)]
    assert a == [second.apply("a", i, t) for i, t in enumerate(texts)] != [other.apply("a", i, t) for i, t in enumerate(texts)]
    assert first.changed[0] == pytest.approx(100, abs=25) and first.changed[1] == 0  # noise is for source b only
    assert first.report()[0]["example"]["after"].startswith("<|fim_prefix|>")


def test_prepare_adds_the_tokens_reports_an_example_and_keeps_validation_clean(tmp_path, tabula_cache):
    rng = np.random.default_rng(0)
    folder = write_texts(tmp_path / "code", [document(rng, 30) for _ in range(40)])
    spec = make_spec({"sources": {"code": {"kind": "files", "paths": [str(folder / "*.txt")]}}, "validation": {"fraction": "10%"},
                      "transforms": [{"kind": "fim", "rate": 0.5}]})
    prepared = prepare(spec)
    (transform,) = prepared.report["transforms"]
    assert transform["kind"] == "fim" and 8 <= transform["documents"] <= 30
    assert transform["example"]["after"].startswith("<|fim_prefix|>") and transform["example"]["source"] == "code"
    ids = [prepared.tokenizer.token_to_id(t) for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")]
    assert None not in ids and prepared.vocab_size == 300
    train, val = np.asarray(prepared.train["code"].tokens), np.asarray(prepared.val["code"].tokens)
    assert (train == ids[0]).sum() == transform["documents"] and not np.isin(val, ids).any()
    plain = prepare(make_spec({"sources": {"code": {"kind": "files", "paths": [str(folder / "*.txt")]}}, "validation": {"fraction": "10%"}}))
    assert plain.fingerprint != prepared.fingerprint and "transforms" not in plain.report
    from tabula.commands.prepare import _summary

    summary = _summary({**prepared.report, "directory": str(prepared.directory)})
    assert f"transform 0 fim: {transform['documents']} training documents changed; tokens added: <|fim_prefix|>" in summary
    assert "    before (code): '" in summary and "    after:  '<|fim_prefix|>" in summary
