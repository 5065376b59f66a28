"""`tabula export --format hf`: what transformers loads from DIR computes tabula's logits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from compiler_specs import BASE
from ruamel.yaml import YAML

from tabula.cli import main
from tabula.commands.export import find_weights
from tabula.compiler import build_model
from tabula.schemas.spec import Spec

transformers = pytest.importorskip("transformers")


def write_spec(path, **model):
    raw = copy.deepcopy(BASE)
    raw["model"].update(model)
    YAML(typ="safe").dump(raw, path)
    return Spec.model_validate(raw)


def write_tokenizer(path, size=97):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(size - 2)} | {"<|endoftext|>": size - 2, "<|pad|>": size - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    tokenizer.save(str(path))


def logits_of(model_dir, ids):
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return type(hf).__name__, hf(ids).logits


def test_spec_exports_seed_initialised_weights_and_tokenizer(tmp_path, capsys):
    spec = write_spec(tmp_path / "tiny.yaml", init={"std": 0.3})
    write_tokenizer(tmp_path / "tokenizer.json")
    assert main(["export", str(tmp_path / "tiny.yaml"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    name, theirs = logits_of(tmp_path / "hf", ids)
    ours = build_model(spec, device="cpu").eval()(ids).detach()
    assert name == "LlamaForCausalLM"
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 95
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 95


def test_run_directory_exports_its_newest_checkpoint(tmp_path):
    from tabula.runtime.checkpoint import save_weights

    run = tmp_path / "run"
    spec = write_spec(tmp_path / "spec.yaml", block={**BASE["model"]["block"], "attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "window": 6}})
    (run / "checkpoints").mkdir(parents=True)
    (tmp_path / "spec.yaml").rename(run / "resolved.yaml")
    write_tokenizer(run / "tokenizer.json")
    trained = {}
    for step, seed in ((10, 1), (200, 2), (30, 3)):  # the highest step wins, not the newest name
        folder = run / "checkpoints" / f"step-{step:06d}"
        folder.mkdir()
        model = build_model(spec.model_copy(update={"seed": seed}), device="cpu")
        save_weights(model.state_dict(), folder / "model.safetensors")
        trained[step] = model
    assert find_weights(run) == run / "checkpoints" / "step-000200" / "model.safetensors"
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    ids = torch.randint(0, 97, (1, 24))
    name, theirs = logits_of(tmp_path / "hf", ids)
    assert name == "MistralForCausalLM"
    torch.testing.assert_close(theirs, trained[200].eval()(ids).detach(), rtol=1e-4, atol=1e-4)


def test_unmappable_model_is_refused_naming_what_does_not_map(tmp_path, capsys):
    write_spec(tmp_path / "gpt2.yaml", block={**BASE["model"]["block"], "mlp": {"kind": "gelu", "hidden": 128}}, position={"kind": "learned"})
    assert main(["export", str(tmp_path / "gpt2.yaml"), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "model.block.mlp.kind: gelu" in err and "model.position.kind: learned" in err
    assert "Traceback" not in err and not (tmp_path / "hf").exists()


def test_run_without_checkpoint_and_missing_path_are_bad_input(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    write_spec(tmp_path / "run" / "resolved.yaml")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2
    assert main(["export", str(tmp_path / "nowhere.yaml"), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "no such spec file" in err


def test_mla_with_latent_norm_loads_as_deepseek_v3(tmp_path):
    attention = {"kind": "mla", "n_heads": 4, "q_latent": 24, "kv_latent": 20, "rope_head_dim": 8, "latent_norm": True, "bias": True}
    spec = write_spec(tmp_path / "mla.yaml", init={"std": 0.3}, tie_embeddings=False,
                      block={**BASE["model"]["block"], "attention": attention})
    assert main(["export", str(tmp_path / "mla.yaml"), "--out", str(tmp_path / "hf")]) == 0
    ids = torch.randint(0, 97, (2, 20))
    name, theirs = logits_of(tmp_path / "hf", ids)
    assert name == "DeepseekV3ForCausalLM"
    torch.testing.assert_close(theirs, build_model(spec, device="cpu").eval()(ids).detach(), rtol=1e-4, atol=1e-4)


def test_spec_errors_are_printed_and_overrides_apply(tmp_path, capsys):
    write_spec(tmp_path / "tiny.yaml")
    assert main(["export", str(tmp_path / "tiny.yaml"), "model.n_layers=zero", "--out", str(tmp_path / "bad")]) == 2
    assert "model.n_layers" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["export", str(tmp_path / "tiny.yaml"), "model.n_layers=1", "--out", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == 1


def test_out_must_be_new_or_empty_unless_forced(tmp_path, capsys):
    write_spec(tmp_path / "tiny.yaml")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "tokenizer.json").write_text("{}")  # left by an earlier export of another model
    assert main(["export", str(tmp_path / "tiny.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out}: the folder is not empty" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "tokenizer.json"]
    assert main(["export", str(tmp_path / "tiny.yaml"), "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    (tmp_path / "a-file").write_text("")
    assert main(["export", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a folder" in err and "Traceback" not in err


def test_spec_with_a_trained_tokenizer_exports_it_from_the_token_cache(tmp_path, capsys, tabula_cache):
    from tabula.runtime.data import prepare
    from tabula.schemas.loader import load_spec

    (tmp_path / "corpus").mkdir()
    for index in range(8):
        (tmp_path / "corpus" / f"{index}.txt").write_text(f"document {index} " + "words in a small corpus " * 30)
    raw = copy.deepcopy(BASE)
    raw["model"]["vocab_size"] = "auto"
    raw["data"] = {"tokenizer": {"kind": "bpe", "vocab_size": 280, "min_frequency": 1},
                   "sources": {"text": {"kind": "files", "paths": ["corpus/*.txt"]}}, "validation": {"fraction": 0}}
    YAML(typ="safe").dump(raw, tmp_path / "bpe.yaml")
    assert main(["export", str(tmp_path / "bpe.yaml"), "model.block.norm.kind=layernorm", "--out", str(tmp_path / "no")]) == 2
    assert "tokenizer" not in capsys.readouterr().err  # a model that cannot map is refused first, and only that is said
    assert main(["export", str(tmp_path / "bpe.yaml"), "--out", str(tmp_path / "before")]) == 0
    assert "no tokenizer written: its data is not prepared yet (tabula prepare" in capsys.readouterr().err
    assert not (tmp_path / "before" / "tokenizer.json").exists()
    prepared = prepare(load_spec(tmp_path / "bpe.yaml"))
    assert main(["export", str(tmp_path / "bpe.yaml"), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").read_text() == prepared.tokenizer_json
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.eos_token_id == prepared.eos_id and len(tokenizer) == 280
