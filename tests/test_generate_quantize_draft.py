"""`tabula generate --quantize` and `--draft`: a quantized model generates; a draft sharing the tokenizer
gives the model's own greedy tokens and reports its acceptance rate (stderr, or --json); a draft with
another tokenizer, a quantization the device cannot do, a bad --draft-k: one clear line, exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "runtime"))
from inference_helpers import byte_tokenizer, spec_dict, spec_file  # noqa: E402

from tabula.cli import main  # noqa: E402

SMALL = {"d_model": 16, "n_layers": 1, "block": {"attention": {"kind": "gqa", "n_heads": 2, "n_kv_heads": 1}, "mlp": {"kind": "swiglu", "hidden": 32}}}


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    target = spec_file(tmp_path_factory.mktemp("target"))
    draft_folder = tmp_path_factory.mktemp("draft")
    byte_tokenizer().save(str(draft_folder / "tokenizer.json"))
    draft = draft_folder / "draft.yaml"
    draft.write_text(json.dumps(spec_dict(**SMALL)), encoding="utf-8")
    other_folder = tmp_path_factory.mktemp("other")
    swapped = json.loads(byte_tokenizer().to_str())
    vocab = swapped["model"]["vocab"]
    first, second = sorted(vocab)[:2]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two ids swapped: another tokenizer of the same size
    (other_folder / "tokenizer.json").write_text(json.dumps(swapped), encoding="utf-8")
    other = other_folder / "other.yaml"
    other.write_text(json.dumps(spec_dict(**SMALL)), encoding="utf-8")
    return {"target": target, "draft": draft, "other": other}


def run(capsys, *argv):
    code = main(["generate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


ARGS = ["--prompt", "def f(x):", "--max-new-tokens", "12", "--ignore-eos", "--json"]


def test_a_quantized_model_generates(specs, capsys):
    for method in ("int8", "int4"):
        code, out, err = run(capsys, specs["target"], *ARGS, "--quantize", method)
        assert code == 0, err
        assert len(json.loads(out)["tokens"]) == 12


def test_a_draft_gives_the_models_own_tokens_and_its_acceptance_rate(specs, capsys):
    plain = json.loads(run(capsys, specs["target"], *ARGS)[1])
    code, out, _ = run(capsys, specs["target"], *ARGS, "--draft", specs["draft"], "--draft-k", "3")
    speculative = json.loads(out)
    assert code == 0 and [t["id"] for t in speculative["tokens"]] == [t["id"] for t in plain["tokens"]]
    stats = speculative["speculative"]
    assert stats["draft_k"] == 3 and stats["proposed"] > 0 and 0 <= stats["acceptance_rate"] <= 1
    code, text, err = run(capsys, specs["target"], *ARGS[:-1], "--draft", specs["draft"])
    assert code == 0 and text == plain["text"] + "\n" and "draft tokens accepted" in err


@pytest.mark.parametrize("extra, message", [
    (["--draft", "{other}"], "the draft model has another tokenizer than the target"),
    (["--quantize", "int8", "--device", "meta"], "int8 quantization runs on cpu or cuda, not on meta"),
    (["--quantize", "int4", "--group-size", "48"], "int4 group size 48 does not divide the inputs"),
    (["--draft", "{draft}", "--draft-k", "0"], "not 0"),
])
def test_what_cannot_be_done_is_one_line_and_exit_2(specs, capsys, extra, message):
    argv = [a.format(**specs) for a in extra]
    code, out, err = run(capsys, specs["target"], "--prompt", "x", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and out == "", err
