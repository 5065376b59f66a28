"""`tabula generate`: streamed text, --json with log-probabilities, the same tokens from a spec and its
Hugging Face export, and one clear line (exit 2) for bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "runtime"))
from inference_helpers import spec_file  # noqa: E402

from tabula.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return spec_file(tmp_path_factory.mktemp("generate"))


def run(capsys, *argv):
    code = main(["generate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_streams_text_and_writes_json(spec, capsys):
    code, text, _ = run(capsys, spec, "--prompt", "def f(x):", "--max-new-tokens", "12", "--ignore-eos")
    assert code == 0 and text.endswith("\n")
    code, out, _ = run(capsys, spec, "--prompt", "def f(x):", "--max-new-tokens", "12", "--ignore-eos", "--json")
    record = json.loads(out)
    assert code == 0 and len(record["tokens"]) == 12 and record["finish_reason"] == "length"
    assert all(token["logprob"] <= 0 for token in record["tokens"])
    assert record["text"] == text[:-1]


def test_sampling_flags_and_seed(spec, capsys, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("import os\n", encoding="utf-8")
    argv = [spec, "--prompt-file", prompt, "--max-new-tokens", "10", "--temperature", "1.2", "--top-k", "40", "--top-p", "0.9",
            "--min-p", "0.02", "--repetition-penalty", "1.1", "--seed", "4", "--ignore-eos", "--json"]
    first, again = json.loads(run(capsys, *argv)[1]), json.loads(run(capsys, *argv)[1])
    assert first["tokens"] == again["tokens"]


def test_a_spec_and_its_hf_export_generate_the_same(spec, capsys, tmp_path):
    out = tmp_path / "hf"
    assert main(["export", str(spec), "--format", "hf", "--out", str(out)]) == 0
    capsys.readouterr()
    args = ["--prompt", "class A:", "--max-new-tokens", "8", "--ignore-eos", "--json"]
    from_spec = json.loads(run(capsys, spec, *args)[1])
    from_hf = json.loads(run(capsys, out, *args)[1])
    assert [t["id"] for t in from_hf["tokens"]] == [t["id"] for t in from_spec["tokens"]]


@pytest.mark.parametrize("argv, message", [
    (["{missing}", "--prompt", "x"], "no such run directory"),
    (["{spec}", "--prompt", "x" * 200], "the prompt has 201 tokens"),
    (["{spec}", "--prompt", "x", "--top-p", "2"], "top_p must be in (0, 1]"),
    (["{spec}", "--prompt", "x", "--temperature", "nan"], "temperature must be a finite number"),
    (["{spec}", "--prompt", "x", "--repetition-penalty", "inf"], "repetition_penalty must be a finite number"),
    (["{spec}", "--prompt-file", "{missing}"], "--prompt-file"),
])
def test_bad_input_is_one_line_and_exit_2(spec, capsys, tmp_path, argv, message):
    argv = [a.format(spec=spec, missing=tmp_path / "nothing") for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and out == ""


def test_a_long_prompt_truncated_with_a_warning(spec, capsys):
    code, _, err = run(capsys, spec, "--prompt", "x" * 200, "--on-long-prompt", "truncate", "--max-new-tokens", "2")
    assert code == 0 and "first 106 tokens were dropped" in err
