"""`tabula export --format onnx`: onnxruntime computes tabula's logits (within 1e-4, fp32) for every
attention kind, at batch sizes and lengths other than the traced ones; what cannot be exported is refused."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from compiler_specs import BASE, tiny_spec
from ruamel.yaml import YAML

from tabula.cli import main
from tabula.compiler import build_model
from tabula.compiler import onnx_export
from tabula.compiler.onnx_export import OnnxExportError, export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MLA = {"kind": "mla", "n_heads": 4, "head_dim": 24, "rope_head_dim": 8, "v_head_dim": 16, "q_latent": 32, "kv_latent": 24,
       "latent_norm": True}


def assert_parity(model, onnx_path, vocab):
    """onnxruntime's logits against the model's, at shapes the exporter did not trace (one token, odd lengths, the full context)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    for shape in [(1, 1), (3, 13), (2, model.max_seq_len)]:
        ids = torch.randint(0, vocab, shape, generator=generator)
        with torch.no_grad():
            ours = model(ids).numpy()
        theirs = session.run(["logits"], {"input_ids": ids.numpy()})[0]
        assert theirs.shape == ours.shape
        torch.testing.assert_close(torch.from_numpy(theirs), torch.from_numpy(ours), rtol=1e-4, atol=1e-4)


def test_cli_exports_a_spec_with_a_sliding_window_that_onnxruntime_runs(tmp_path, capsys):
    raw = copy.deepcopy(BASE)
    raw["model"]["block"]["attention"]["window"] = 8
    YAML(typ="safe").dump(raw, tmp_path / "tiny.yaml")
    assert main(["export", str(tmp_path / "tiny.yaml"), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert "(ONNX)" in capsys.readouterr().out
    info = json.loads((tmp_path / "onnx" / "tabula_onnx.json").read_text())
    assert info["vocab_size"] == 97 and info["max_seq_len"] == 32 and list(info["inputs"]) == ["input_ids"]
    model = build_model(tiny_spec(block={"attention": raw["model"]["block"]["attention"]}), device="cpu").eval()
    assert_parity(model, tmp_path / "onnx" / "model.onnx", 97)


def test_cli_exports_a_trained_runs_checkpoint(tmp_path, capsys):
    """A run folder's checkpoint (not a spec): the model is loaded with its RoPE tables made, which the
    trace needs (they were left on the meta device, and the export crashed)."""
    from tabula.runtime.checkpoint import save_weights
    from tabula.schemas.rundir_protocol import RESOLVED_FILE, WEIGHTS_FILE

    run = tmp_path / "run"
    (run / "checkpoints" / "step-000002").mkdir(parents=True)
    YAML(typ="safe").dump(copy.deepcopy(BASE), run / RESOLVED_FILE)
    model = build_model(tiny_spec(), device="cpu")
    with torch.no_grad():
        model.embed.weight.add_(1.0)  # not the seed's weights: the export must read the checkpoint's
    save_weights(model.state_dict(), run / "checkpoints" / "step-000002" / WEIGHTS_FILE)
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0, capsys.readouterr().err
    assert_parity(model.eval(), tmp_path / "onnx" / "model.onnx", 97)


KINDS = [
    # each export takes seconds (torch.export + onnxscript): the default suite runs the CLI test above alone
    pytest.param({"block": {"attention": MLA}}, id="mla", marks=pytest.mark.slow),
    pytest.param({"block": {"attention": {"kind": "mha", "n_heads": 4}}}, id="mha", marks=pytest.mark.slow),
    pytest.param({"block": {"attention": {"kind": "mqa", "n_heads": 4}}}, id="mqa", marks=pytest.mark.slow),
    pytest.param({}, id="gqa", marks=pytest.mark.slow),
    pytest.param({"position": {"kind": "learned"}, "block": {"norm": {"kind": "layernorm", "eps": 1e-5}, "mlp": {"kind": "gelu", "hidden": 96}},
                  "tie_embeddings": False}, id="mha-learned-layernorm-gelu", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("model_keys", KINDS)
def test_onnxruntime_logits_equal_tabulas(tmp_path, model_keys):
    model = build_model(tiny_spec(**model_keys), device="cpu").eval()
    assert export_onnx(model, tmp_path, optimize=False) == ["model.onnx", "tabula_onnx.json"]
    assert_parity(model, tmp_path / "model.onnx", 97)


def test_a_kind_without_a_verified_graph_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    YAML(typ="safe").dump(BASE, tmp_path / "tiny.yaml")
    monkeypatch.setitem(onnx_export.EXPORTABLE, "attention", {"mha", "mla"})
    assert main(["export", str(tmp_path / "tiny.yaml"), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err
    assert "cannot be exported to ONNX" in err and "model.block.attention.kind: gqa: no verified ONNX graph" in err
    assert not (tmp_path / "onnx").exists()


def test_an_exporter_failure_is_refused_with_its_reason(tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise RuntimeError("Unsupported: data-dependent control flow\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", fails)
    with pytest.raises(OnnxExportError, match="could not trace the model: Unsupported: data-dependent control flow$"):
        export_onnx(build_model(tiny_spec(), device="cpu"), tmp_path)
    assert not (tmp_path / "model.onnx").exists()


def test_every_layer_of_a_pattern_is_checked_and_a_mamba_or_moe_layer_is_refused():
    from tabula.schemas.loader import SPECS_DIR, load_spec

    jamba = onnx_export.onnx_problems(load_spec(SPECS_DIR / "presets" / "jamba-tiny.yaml").model)
    assert any(problem.startswith("model.block.kind: mamba") for problem in jamba), jamba
    deepseek = onnx_export.onnx_problems(load_spec(SPECS_DIR / "presets" / "deepseek-v3-tiny.yaml").model)
    # the default block's MoE is named once, not once a layer; the dense first layer (an override) exports
    assert [p for p in deepseek if ".mlp.kind" in p] == [p for p in deepseek if p.startswith("model.block.mlp.kind: moe")]
    assert len([p for p in deepseek if p.startswith("model.block.mlp.kind: moe")]) == 1


# ------------------------------------------------------------ with the key/value cache (--with-cache)


def assert_cached_parity(model, onnx_path, vocab, batch, prompt=6, steps=4):
    """A prompt through the graph with an empty past, then one token at a time with the presents it returned: at
    every step onnxruntime's logits equal the model's full recompute of the whole sequence at the new positions."""
    from tabula.compiler.onnx_cache import cache_names

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    info = json.loads((onnx_path.parent / "tabula_onnx.json").read_text())
    past_names, present_names = cache_names(model.n_layers)
    assert info["kv_cache"] is True and [i.name for i in session.get_inputs()] == ["input_ids", *past_names] == list(info["inputs"])
    assert [o.name for o in session.get_outputs()] == ["logits", *present_names] == list(info["outputs"])
    ids = torch.randint(0, vocab, (batch, prompt + steps), generator=torch.Generator().manual_seed(1))
    past = {name: np.zeros((batch, shape[1], 0, shape[3]), np.float32)
            for name, shape in ((name, info["inputs"][name]["shape"]) for name in past_names)}
    start = 0
    for end in [prompt, *range(prompt + 1, prompt + steps + 1)]:
        logits, *presents = session.run(None, {"input_ids": ids[:, start:end].numpy(), **past})
        with torch.no_grad():
            ours = model(ids[:, :end])[:, start:end]
        torch.testing.assert_close(torch.from_numpy(logits), ours, rtol=1e-4, atol=1e-4)
        assert all(present.shape[2] == end for present in presents)
        past, start = dict(zip(past_names, presents, strict=True)), end


def test_cli_exports_a_graph_with_cache_inputs_and_outputs_that_decodes_step_by_step(tmp_path, capsys):
    """GQA with a sliding window narrower than the sequence: the keys that fall out of it are masked."""
    raw = copy.deepcopy(BASE)
    raw["model"]["block"]["attention"]["window"] = 4
    YAML(typ="safe").dump(raw, tmp_path / "tiny.yaml")
    assert main(["export", str(tmp_path / "tiny.yaml"), "--format", "onnx", "--with-cache", "--out", str(tmp_path / "onnx")]) == 0
    assert "(ONNX with a key/value cache)" in capsys.readouterr().out
    info = json.loads((tmp_path / "onnx" / "tabula_onnx.json").read_text())
    assert info["inputs"]["past_key_values.1.value"] == {"dtype": "float32", "shape": ["batch", 2, "past_seq", 16]}
    assert info["outputs"]["present.0.key"]["shape"] == ["batch", 2, "past_seq + seq", 16]
    model = build_model(tiny_spec(block={"attention": raw["model"]["block"]["attention"]}), device="cpu").eval()
    for batch in (1, 2):
        assert_cached_parity(model, tmp_path / "onnx" / "model.onnx", 97, batch)


CACHED_KINDS = [
    pytest.param({"block": {"attention": {"kind": "mha", "n_heads": 4, "qk_norm": True}}}, id="mha-qk-norm", marks=pytest.mark.slow),
    pytest.param({"block": {"attention": MLA}}, id="mla", marks=pytest.mark.slow),
    pytest.param({"block": {"attention": {"kind": "mqa", "n_heads": 4}}, "position": {"kind": "learned"}}, id="mqa-learned",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("model_keys", CACHED_KINDS)
def test_a_graph_with_cache_decodes_as_tabula_does(tmp_path, model_keys):
    model = build_model(tiny_spec(**model_keys), device="cpu").eval()
    assert export_onnx(model, tmp_path, with_cache=True) == ["model.onnx", "tabula_onnx.json"]
    assert_cached_parity(model, tmp_path / "model.onnx", 97, batch=2)


def test_with_cache_is_refused_for_other_formats(tmp_path, capsys):
    YAML(typ="safe").dump(BASE, tmp_path / "tiny.yaml")
    assert main(["export", str(tmp_path / "tiny.yaml"), "--format", "hf", "--with-cache", "--out", str(tmp_path / "hf")]) == 2
    assert "--with-cache is for --format onnx" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
