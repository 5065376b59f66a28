"""`tabula prepare` as a user runs it: a spec file, relative paths, --json, the cache, bad input."""

from __future__ import annotations

import json

import numpy as np
from data_helpers import document, write_texts

from tabula.cli import main

SPEC = """\
name: clitest
seed: 3
model: {d_model: 32, n_layers: 1, max_seq_len: 64, block: {attention: {kind: gqa, n_heads: 2, n_kv_heads: 1}, mlp: {kind: swiglu, hidden: 64}}}
train: {batch_tokens: 256, optimizer: {kind: adamw, lr: 1.0e-3}, budget: {tokens: 4096}}
data:
  tokenizer: {kind: bpe, vocab_size: 300, min_frequency: 1}
  sources:
    corpus: {kind: files, paths: ["corpus/*.txt"]}
  filters: [{kind: length, min_chars: 20}, {kind: dedup}]
  validation: {fraction: 10%}
"""


def write_spec(tmp_path):
    rng = np.random.default_rng(0)
    texts = [document(rng) for _ in range(20)]
    write_texts(tmp_path / "corpus", texts + texts[:2] + ["short"])
    (tmp_path / "spec.yaml").write_text(SPEC)
    return tmp_path / "spec.yaml"


def test_prepare_json_then_cache_hit(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path)
    monkeypatch.chdir("/")  # paths in the spec are relative to its folder, not the working directory
    assert main(["prepare", str(spec), "--json", "--cache-dir", str(tmp_path / "cache")]) == 0
    first = json.loads(capsys.readouterr().out)
    source = first["sources"]["corpus"]
    assert [(f["in"], f["out"]) for f in source["filters"]] == [(23, 22), (22, 20)]
    assert (source["train"]["documents"], source["val"]["documents"]) == (18, 2)
    assert source["tokens"] == source["train"]["tokens"] + source["val"]["tokens"] > 0
    assert first["cache"] == "miss" and len(first["fingerprint"]) == 32
    assert main(["prepare", str(spec), "--json", "--cache-dir", str(tmp_path / "cache")]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["cache"] == "hit" and second["fingerprint"] == first["fingerprint"]
    assert main(["prepare", str(spec), "data.validation.fraction=0", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "cache miss" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, tabula_cache):
    spec = write_spec(tmp_path)
    spec.write_text(SPEC.replace("corpus/*.txt", "nowhere/*.txt"))
    assert main(["prepare", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "spec.yaml:8:" in err and "data.sources.corpus.paths.0" in err and "matches no files" in err
    assert "Traceback" not in err
    spec.write_text(SPEC)
    assert main(["prepare", str(spec), "data.sources.corpus.paths=[absent.txt]"]) == 2
    assert "<override 1" in capsys.readouterr().err
    assert not list(tabula_cache.glob("*/meta.json"))
    assert main(["prepare", str(spec), "data.tokenizer.vocab_size=60000"]) == 2
    assert "supports only" in capsys.readouterr().err



def test_a_cache_dir_that_cannot_be_used_is_one_line_and_exit_2(tmp_path, capsys):
    spec = write_spec(tmp_path)
    (tmp_path / "a-file").write_text("")
    for cache in (tmp_path / "a-file", tmp_path / "a-file" / "below"):
        assert main(["prepare", str(spec), "--cache-dir", str(cache)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(cache) in err and "Traceback" not in err


def test_prepare_reports_trained_and_masked_tokens_of_the_shipped_chat_spec(specs_dir, tmp_path, capsys):
    spec = str(specs_dir / "finetune-chat.yaml")
    assert main(["validate", spec]) == 0
    assert "finetune-chat.yaml: ok" in capsys.readouterr().out
    assert main(["prepare", spec, "--json", "--cache-dir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    source, totals = report["sources"]["chat"], report["totals"]
    assert source["skipped"] == {"count": 0, "first": []} and source["documents"] == 600
    assert 0 < totals["trained_tokens"] < totals["tokens"] == totals["trained_tokens"] + totals["masked_tokens"]
    for split in ("train", "val"):
        assert source[split]["trained_tokens"] + source[split]["masked_tokens"] == source[split]["tokens"] > 0
    assert report["chat"]["template"] == "chatml" and report["chat"]["max_tokens"] == 256
    assert main(["prepare", spec, "--cache-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "template chatml, max 256 tokens, cut on the right" in text
    assert f"trained on {totals['trained_tokens']:,} of {totals['tokens']:,} tokens" in text
    assert f"({source['train']['trained_tokens']:,} trained, {source['train']['masked_tokens']:,} masked)" in text


def test_prepare_lists_skipped_records_by_file_and_line(tmp_path, capsys):
    chats = [json.dumps({"messages": [{"role": "user", "content": f"what is {i} plus {i}?"},
                                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}) for i in range(40)]
    (tmp_path / "chat.jsonl").write_text("\n".join(chats[:5] + ["{oops", json.dumps({"messages": "hi"})] + chats[5:]) + "\n")
    (tmp_path / "spec.yaml").write_text(SPEC.replace(
        '    corpus: {kind: files, paths: ["corpus/*.txt"]}',
        "    corpus: {kind: files, paths: [chat.jsonl], format: jsonl, records: {kind: chat}, on_error: skip}\n"
        "  packing: {document_masking: true}"))
    assert main(["prepare", str(tmp_path / "spec.yaml"), "--cache-dir", str(tmp_path / "cache")]) == 0
    text = capsys.readouterr().out
    assert "skipped 2 bad records; the first:" in text
    assert f"{tmp_path / 'chat.jsonl'}:6: not valid JSON" in text
    assert f"{tmp_path / 'chat.jsonl'}:7: 'messages' is text, not a list of messages" in text
