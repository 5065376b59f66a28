"""`tabula plan`: the readable report, --json, --deepspeed-config and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tabula.cli import main
from tabula.compiler.deepspeed_config import deepspeed_config
from tabula.compiler.estimate import count_parameters
from tabula.compiler.plan import make_plan
from tabula.schemas.loader import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
QUICKSTART = str(SPECS / "quickstart.yaml")


def plan(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_has_the_promised_shape(capsys):
    code, out, _ = plan(capsys, QUICKSTART, "--json", "--device", "cpu")
    assert code == 0
    data = json.loads(out)
    spec = load_spec(QUICKSTART)
    from tabula.schemas.canonical import spec_hash

    assert data["spec_hash"] == spec_hash(spec)
    vocab = spec.data.tokenizer.vocab_size  # vocab_size: auto takes the tokenizer's
    assert data["parameters"]["total"] == count_parameters(spec.model, vocab).total
    assert data["parameters"]["embedding"] == vocab * spec.model.d_model
    assert data["flops_per_token"] > 6 * data["parameters"]["total"]
    assert set(data["memory_per_rank"]) == {"weights", "gradients", "master_weights", "master_gradients", "optimizer_state", "weight_copies",
                                           "gathered_weights", "activations", "total"}
    assert all(isinstance(v, int) for v in data["memory_per_rank"].values())
    assert data["steps"]["total"] == make_plan(spec).total_steps == spec.train.budget.tokens // spec.train.batch_tokens
    assert [s["seq_len"] for s in data["stages"]] == [128, 256]
    assert data["precision"] == "fp32"


def test_overrides_and_world_size_change_the_plan(capsys):
    code, out, _ = plan(capsys, QUICKSTART, "train.batch_tokens=32k", "train.budget.tokens=3M", "parallel.backend=deepspeed",
                        "--world-size", "2", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["world_size"] == 2
    assert data["steps"]["total"] == 96
    assert data["stages"][1]["micro_batch"] * data["stages"][1]["grad_accum"] == 32 * 1024 // 256 // 2


def test_a_count_just_under_a_unit_reads_in_the_next_unit(capsys):
    # 1,023,999 tokens are 999.999k: '{:.3g}' made that '1e+03k'
    code, out, _ = plan(capsys, QUICKSTART, "train.budget.tokens=1023999", "--device", "cpu")
    assert code == 0
    assert "768k - 0.977M" in out
    assert "e+" not in out.split("  compute")[0]  # FLOPs are written in scientific notation, nothing else is


def test_report_shows_each_part(capsys):
    code, out, _ = plan(capsys, QUICKSTART, "--device", "cpu", "--peak-tflops", "0.05", "--mfu", "0.5")
    assert code == 0
    for text in ("parameters", "3,819,776", "FLOPs per token", "optimizer state", "activations", "stages", "warmup", "steps", "time"):
        assert text in out
    assert "0.05 TFLOP/s peak x 0.5 MFU" in out


def test_time_scales_with_peak_and_mfu(capsys):
    slow = json.loads(plan(capsys, QUICKSTART, "--json", "--peak-tflops", "1", "--mfu", "0.5")[1])
    fast = json.loads(plan(capsys, QUICKSTART, "--json", "--peak-tflops", "2", "--mfu", "0.5")[1])
    assert slow["time"]["seconds"] == pytest.approx(2 * fast["time"]["seconds"])
    assert slow["time"]["seconds"] == pytest.approx(slow["time"]["total_flops"] / (1e12 * 0.5))


def test_deepspeed_config_is_printed_and_checked(capsys):
    path = str(SPECS / "zero3-offload.yaml")
    code, out, err = plan(capsys, path, "--deepspeed-config", "--device", "cuda")
    assert code == 0
    config = json.loads(out)
    spec = load_spec(path)
    assert config == deepspeed_config(spec, make_plan(spec, device_type="cuda"))
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert config["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert config["bf16"] == {"enabled": True}
    assert "scheduler" not in config
    assert config["train_batch_size"] == config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * 2
    try:
        import tabula.runtime.deepspeed_check  # noqa: F401
    except ImportError:  # a compiler-only install says the config went unchecked
        assert "not checked" in err
    else:
        assert "checked: DeepSpeed accepts this config at world size 2" in err


def test_fp16_config_uses_dynamic_loss_scaling(capsys):
    code, out, _ = plan(capsys, str(SPECS / "zero2.yaml"), "parallel.precision=fp16", "--deepspeed-config")
    assert code == 0
    fp16 = json.loads(out)["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0


@pytest.mark.parametrize("argv", [["--mfu", "1.5"], ["--mfu", "0"], ["--mfu", "nan"], ["--peak-tflops", "-1"],
                                  ["--peak-tflops", "nan"], ["--peak-tflops", "inf"], ["--world-size", "0"]])
def test_bad_flags_exit_2(capsys, argv):
    code, out, err = plan(capsys, QUICKSTART, *argv)
    assert code == 2 and out == ""
    assert f"tabula plan: error: {argv[0]}" in err and "Traceback" not in err  # the message names the flag


def test_bad_spec_exits_2_with_the_position(capsys):
    code, out, err = plan(capsys, QUICKSTART, "train.batch_tokens=1000")
    assert code == 2 and out == ""
    assert "train.batch_tokens" in err and "1024" in err


def test_world_size_on_a_local_spec_is_refused(capsys):
    code, _, err = plan(capsys, QUICKSTART, "--world-size", "2")
    assert code == 2 and "deepspeed" in err


def test_missing_file_exits_2(capsys):
    code, _, err = plan(capsys, "no-such-spec.yaml")
    assert code == 2 and "no-such-spec.yaml" in err


def test_a_tokenizer_file_gives_the_vocabulary(capsys, tmp_path):
    vocab = {f"t{i}": i for i in range(40)}
    (tmp_path / "tok.json").write_text(json.dumps({
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
        "added_tokens": [{"id": 40, "content": "<|endoftext|>", "special": True}],
    }))
    text = (SPECS / "quickstart.yaml").read_text().replace("{kind: bpe, vocab_size: 4096, max_chars: 4M}", "{kind: file, path: tok.json}")
    assert "tok.json" in text
    (tmp_path / "spec.yaml").write_text(text)
    code, out, _ = plan(capsys, str(tmp_path / "spec.yaml"), "--json")
    assert code == 0
    assert json.loads(out)["vocab_size"] == 42  # 40 pieces, the end-of-text token, the pad token the runtime adds


def test_planning_builds_no_model(capsys, monkeypatch):
    import tabula.compiler
    import tabula.compiler.model

    def refuse(*args, **kwargs):
        raise AssertionError("tabula plan built a model")

    monkeypatch.setattr(tabula.compiler, "build_model", refuse)
    monkeypatch.setattr(tabula.compiler.model.Transformer, "__init__", refuse)
    code, out, _ = plan(capsys, str(SPECS / "tabulaprima-1.3b.yaml"), "--json", "--device", "cuda")
    assert code == 0
    assert json.loads(out)["parameters"]["total"] > 1_300_000_000


@pytest.mark.parametrize("name, total", [("tabulaprima-278m.yaml", 278_340_480), ("tabulaprima-1.3b.yaml", 1_318_574_080)])
def test_tabulaprima_specs_count_the_original_models_parameters(capsys, name, total):
    """The original TabulaPrima models' counts, the tied head counted once: their attention
    output projection alone carries a bias (`bias: {o: true}`)."""
    code, out, _ = plan(capsys, str(SPECS / name), "--json", "--device", "cpu")
    assert code == 0
    assert json.loads(out)["parameters"]["total"] == total


def test_a_fine_tuning_method_shows_what_it_trains_and_saves(capsys):
    lora = "train.finetune={kind: lora, rank: 8, targets: [attn.*, mlp.*]}"
    code, out, _ = plan(capsys, QUICKSTART, lora, "--device", "cpu")
    assert code == 0
    assert "  trainable (lora)            143,872  144k  (3.63% of the model)" in out
    assert "    added by lora             143,872" in out and "  saved by lora " in out
    code, out, _ = plan(capsys, QUICKSTART, lora, "--json", "--device", "cpu")
    data = json.loads(out)
    assert data["trainable"] == {"method": "lora", "trainable": 143872, "frozen": data["parameters"]["total"], "added": 143872}
    whole = json.loads(plan(capsys, QUICKSTART, "--json", "--device", "cpu")[1])
    assert data["memory_saved_by_finetune"] == (sum(whole["memory_per_rank"].values()) - whole["memory_per_rank"]["total"]
                                                - whole["memory_per_rank"]["activations"]
                                                - (sum(data["memory_per_rank"].values()) - data["memory_per_rank"]["total"]
                                                   - data["memory_per_rank"]["activations"]))
    assert data["memory_per_rank"]["gradients"] == 143872 * 4 and whole["trainable"]["method"] is None


def test_qlora_is_refused_on_a_cpu_with_the_spec_path(capsys):
    code, _, err = plan(capsys, QUICKSTART, "train.finetune={kind: qlora}", "--device", "cpu")
    assert code == 2 and "train.finetune.kind: qlora holds the base in 4 bits with bitsandbytes, which needs a CUDA GPU" in err
    code, out, _ = plan(capsys, QUICKSTART, "train.finetune={kind: qlora}", "--device", "cuda")
    assert code == 0 and "trainable (qlora)" in out
