"""`tabula serve` as a user meets it before a request: bad input is one clear line and exit 2; a model
loads (a spec's, seed-initialised: run folders and exports load through the same load_generator) and a
port in use is said as such."""

from __future__ import annotations

import socket

import pytest
import torch

from tabula.cli import main

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_a_missing_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tabula serve: ") and "no such run directory" in err and err.count("\n") == 1


@pytest.mark.parametrize("flags, message", [(["--max-batch", "0"], "expected at least 1"),
                                           (["--port", "99999"], "a port is 0-65535, found 99999"),
                                           (["--port", "http"], "expected a port number")])
def test_bad_flags_exit_2(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "x", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def tiny_spec(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(60)} | {"<|endoftext|>": 60, "<|pad|>": 61}, unk_token="<|pad|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tiny.yaml").write_text(
        "name: tiny\nmodel: {vocab_size: 64, d_model: 32, n_layers: 1, max_seq_len: 32,\n"
        "  block: {norm: {kind: rmsnorm}, attention: {kind: gqa, n_heads: 4, n_kv_heads: 2}, mlp: {kind: swiglu, hidden: 64}}}\n"
        "data: {tokenizer: {kind: file, path: tokenizer.json}, sources: {text: {kind: python_stdlib}},\n"
        "  curriculum: [{seq_len: 8, mix: {text: 1.0}}]}\n"
        "train: {batch_tokens: 64, optimizer: {kind: adamw, lr: 0.001}, budget: {tokens: 1024}}\n")
    return tmp_path / "tiny.yaml"


def serve_on_a_taken_port(*args: str) -> int:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", *args, "--port", str(port)]) == 2
    return port


def test_a_spec_loads_and_a_port_in_use_is_refused(tmp_path, capsys):
    port = serve_on_a_taken_port(str(tiny_spec(tmp_path)))
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_quantize_int8_loads_on_the_cpu(tmp_path, capsys, monkeypatch):
    """--quantize goes to load_generator, which quantizes the weights: int8 is refused nothing on the CPU
    (the command gets as far as listening)."""
    import tabula.runtime.inference as inference

    loaded = []
    real = inference.load_generator

    def spy(source, **kwargs):
        loaded.append(real(source, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(inference, "load_generator", spy)
    port = serve_on_a_taken_port(str(tiny_spec(tmp_path)), "--quantize", "int8", "--device", "cpu")
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    linears = [m for m in loaded[0].model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m.weight.data) is not torch.Tensor for m in linears)  # torchao's int8 tensors
