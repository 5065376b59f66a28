"""`tabula export` of a fine-tuning run: --format hf merges LoRA and DoRA into weights transformers loads;
--format peft writes an adapter peft.PeftModel.from_pretrained loads onto the base exported beside it.
Both compute the logits of tabula's fine-tuned model (within 1e-4, fp32)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from compiler_specs import BASE
from ruamel.yaml import YAML
from test_export import write_tokenizer

from tabula.cli import main
from tabula.compiler.adapters import apply_finetune
from tabula.runtime.build import build_base_model
from tabula.runtime.checkpoint import save_weights, saved_names, weights_metadata
from tabula.schemas.spec import Spec

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

DEEPSEEK = {"kind": "mla", "n_heads": 4, "q_latent": 24, "kv_latent": 20, "rope_head_dim": 8, "latent_norm": True, "bias": True}


def finetune_run(tmp_path, finetune: dict, attention: dict | None = None, **model):
    """A run folder whose one checkpoint holds trained (here: perturbed) parameters of `finetune` alone,
    as the engines write them. Returns (run folder, spec, the fine-tuned model)."""
    raw = copy.deepcopy(BASE)
    raw["model"].update(model)
    if attention is not None:
        raw["model"]["block"]["attention"] = attention
    raw["train"]["finetune"] = finetune
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "step-000001"
    checkpoint.mkdir(parents=True)
    YAML(typ="safe").dump(raw, run / "resolved.yaml")
    write_tokenizer(run / "tokenizer.json")
    spec = Spec.model_validate(raw)
    tuned = apply_finetune(build_base_model(spec, 97, "cpu"), spec.train.finetune, seed=spec.seed, model_spec=spec.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in tuned.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    names = saved_names(tuned)
    save_weights({n: t for n, t in tuned.state_dict().items() if n in names}, checkpoint / "model.safetensors", weights_metadata(tuned))
    (checkpoint / "state.json").write_text(json.dumps({"step": 1, "tokens": 64, "vocab_size": 97}))
    return run, spec, tuned.eval()


def ours(model, ids):
    with torch.no_grad():
        return model(ids)


LOW_RANK = {
    "lora": {"kind": "lora", "rank": 4, "alpha": 8},
    "dora-rslora": {"kind": "dora", "rank": 2, "rslora": True, "targets": ["q_proj", "v_proj", "mlp.down"]},
}


@pytest.mark.parametrize("method", list(LOW_RANK))
def test_merged_export_loads_in_transformers_with_the_fine_tuned_logits(tmp_path, method):
    run, _, tuned = finetune_run(tmp_path, LOW_RANK[method])
    ids = torch.randint(0, 97, (2, 16))
    expected = ours(tuned, ids)
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, expected, rtol=1e-4, atol=1e-4)
    import tabula

    with torch.no_grad():  # load_model merges too
        torch.testing.assert_close(tabula.load_model(run)(ids), expected, rtol=1e-4, atol=1e-4)


def peft_logits(out, ids, virtual: int = 0):
    base = transformers.AutoModelForCausalLM.from_pretrained(out / "base").eval()
    model = peft.PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits[:, virtual:]  # prompt tuning's logits include its virtual positions


CASES = {
    **{name: (finetune, None) for name, finetune in LOW_RANK.items()},
    "prompt_tuning": ({"kind": "prompt_tuning", "virtual_tokens": 4}, None),
    "prefix_tuning": ({"kind": "prefix_tuning", "virtual_tokens": 4}, None),
    "prefix_projection": ({"kind": "prefix_tuning", "virtual_tokens": 3, "projection": True}, None),
    # DeepSeek-V3 stacks kv_down and k_rope in kv_a_proj_with_mqa: one adapter, exactly theirs
    "mla-lora-kv_down": ({"kind": "lora", "rank": 3, "targets": ["q_down", "q_up", "kv_down", "kv_up", "o_proj"]}, DEEPSEEK),
    "mla-dora-stacked": ({"kind": "dora", "rank": 2, "targets": ["attn.*"]}, DEEPSEEK),
    "mla-rslora-stacked": ({"kind": "lora", "rank": 2, "rslora": True, "targets": ["kv_down", "k_rope"]}, DEEPSEEK),
}


@pytest.mark.parametrize("case", list(CASES))
def test_peft_export_loads_onto_the_exported_base_with_the_fine_tuned_logits(tmp_path, case):
    finetune, attention = CASES[case]
    extra = {"init": {"std": 0.3}, "tie_embeddings": False} if attention else {}
    run, spec, tuned = finetune_run(tmp_path, finetune, attention, **extra)
    ids = torch.randint(0, 97, (2, 12))
    assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "peft" / "base").resolve())
    virtual = finetune.get("virtual_tokens", 0) if finetune["kind"] == "prompt_tuning" else 0
    torch.testing.assert_close(peft_logits(tmp_path / "peft", ids, virtual), ours(tuned, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
def test_virtual_tokens_have_no_merged_form(tmp_path, capsys, kind):
    run, _, _ = finetune_run(tmp_path, {"kind": kind, "virtual_tokens": 2})
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    assert f"{kind} learns virtual tokens, which fold into no weight: export it with --format peft" in capsys.readouterr().err


def test_peft_format_needs_an_adapter(tmp_path, capsys):
    run, _, _ = finetune_run(tmp_path, {"kind": "full", "freeze": ["embed.*"]})
    assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "peft")]) == 2
    assert "full fine-tuning has none (export --format hf)" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0  # the frozen embedding from the base


def test_adapters_peft_would_load_elsewhere_are_refused(tmp_path, capsys):
    run, _, _ = finetune_run(tmp_path, {"kind": "lora", "rank": 2, "targets": ["q_up", "mlp.*"]}, DEEPSEEK,
                             init={"std": 0.3}, tie_embeddings=False)
    assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "peft")]) == 2
    err = capsys.readouterr().err
    assert "this adapter has no peft equivalent" in err and "down_proj, gate_proj, up_proj into its fused experts' weights" in err
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
