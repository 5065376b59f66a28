"""`tabula import HF_DIR`: tiny random transformers checkpoints (built here, no download) become specs whose
models, loaded from them (model.init: {kind: from}), compute transformers' logits; what tabula cannot
express is refused with every reason; hub ids resolve through huggingface_hub's cache only."""

from __future__ import annotations

import copy

import pytest
import torch
from compiler_specs import BASE
from hf_checkpoints import EOS, VOCAB, checkpoint, config, write_tokenizer
from ruamel.yaml import YAML

from tabula.cli import main
from tabula.compiler import build_model
from tabula.runtime.errors import RunInputError
from tabula.runtime.pretrained import WeightsRefused, check_pretrained, load_pretrained
from tabula.schemas.loader import load_spec

transformers = pytest.importorskip("transformers")


def imported(tmp_path, source, *overrides):
    """The spec `tabula import source` writes, and its model holding the checkpoint's weights."""
    assert main(["import", str(source), "--out", str(tmp_path / "spec.yaml")]) == 0
    spec = load_spec(tmp_path / "spec.yaml", overrides=list(overrides))
    model = build_model(spec, vocab_size=spec.vocab_size).materialize("cpu", spec.seed)
    load_pretrained(model, spec)
    return spec, model.eval()


def assert_same_logits(model, hf, seq_len=24):
    ids = torch.randint(0, VOCAB, (2, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "architecture, changes, attention",
    [
        ("llama", {"num_key_value_heads": 2, "attention_bias": True, "mlp_bias": True,
                   "rope_parameters": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0}},
         {"kind": "gqa", "n_kv_heads": 2, "bias": True}),
        ("llama", {"num_key_value_heads": 1, "tie_word_embeddings": True, "head_dim": 12}, {"kind": "mqa", "head_dim": 12}),
        ("mistral", {"sliding_window": 5}, {"kind": "gqa", "window": 5}),
        ("qwen2", {"tie_word_embeddings": True}, {"kind": "gqa", "bias": {"q": True, "k": True, "v": True, "o": False}}),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 0}, {"window": 6}),
        ("deepseek_v3", {}, {"kind": "mla", "q_latent": 16, "kv_latent": 12, "rope_head_dim": 8, "head_dim": 16, "latent_norm": True}),
        ("deepseek_v3", {"q_lora_rank": None, "rope_interleave": False, "attention_bias": True},
         {"kind": "mla", "q_latent": None, "bias": {"q_down": False, "q_up": False, "q": False, "kv_down": True, "kv_up": False, "k_rope": True, "o": True}}),
    ],
    ids=["llama-gqa-bias-linear-rope", "llama-mqa-tied-sharded", "mistral-window", "qwen2-tied", "qwen2-every-layer-slides",
         "deepseek-v3-interleaved", "deepseek-v3-direct-q-bias"],
)
def test_imported_models_compute_transformers_logits(tmp_path, architecture, changes, attention):
    shard = "20KB" if changes.get("tie_word_embeddings") and architecture == "llama" else None
    hf = checkpoint(tmp_path / "hf", architecture, shard=shard, **changes)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists() == (shard is not None)
    spec, model = imported(tmp_path, tmp_path / "hf")
    written = spec.model.block.attention.model_dump()
    assert {key: written[key] for key in attention} == attention
    assert spec.model.init.kind == "from" and spec.model.init.path == "hf" and spec.model.vocab_size == VOCAB
    assert spec.data.tokenizer.path == "hf/tokenizer.json" and spec.data.tokenizer.eos_token == EOS
    assert spec.model.tie_embeddings == bool(changes.get("tie_word_embeddings"))
    assert_same_logits(model, hf, seq_len=24)


def test_the_interleaved_rotary_layout_matters(tmp_path):
    """DeepSeek's interleaved RoPE pairs are permuted into tabula's halves: the same weights read as
    halves (rope_interleave: false) give other logits, so the parity above tests the permutation."""
    hf = checkpoint(tmp_path / "hf", "deepseek_v3")
    spec, model = imported(tmp_path, tmp_path / "hf")
    as_halves = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", rope_interleave=False).eval()
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids) - as_halves(ids).logits).abs().max() > 1e-2
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def write_spec(path, **model):
    raw = copy.deepcopy(BASE)
    raw["model"].update(model, init={"std": 0.3})
    YAML(typ="safe").dump(raw, path)
    write_tokenizer(path.parent / "tokenizer.json")
    return load_spec(path)


@pytest.mark.parametrize(
    "attention, architecture",
    [
        ({"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "bias": {"q": True, "k": True, "v": True}}, "Qwen2ForCausalLM"),
        ({"kind": "mla", "n_heads": 4, "q_latent": 24, "kv_latent": 20, "rope_head_dim": 8, "latent_norm": True, "bias": True},
         "DeepseekV3ForCausalLM"),
    ],
    ids=["qwen2", "deepseek-v3"],
)
def test_export_then_import_gives_the_same_logits(tmp_path, attention, architecture, capsys):
    spec = write_spec(tmp_path / "tiny.yaml", block={**BASE["model"]["block"], "attention": attention}, tie_embeddings=False)
    assert main(["export", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "hf")]) == 0
    assert architecture in capsys.readouterr().out
    _, model = imported(tmp_path / "back", tmp_path / "hf")
    original = build_model(spec, device="cpu").eval()
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), original(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "architecture, changes, reasons",
    [
        ("deepseek_v3", {"first_k_dense_replace": 1}, ["first_k_dense_replace: 1: layers 1-1 are mixture-of-experts"]),
        ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                       "original_max_position_embeddings": 16}, "hidden_act": "gelu"},
         ["rope_parameters.rope_type: yarn scaling has no tabula equivalent", "hidden_act: gelu"]),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
         ["use_sliding_window: layers 1 of 2 slide (max_window_layers: 1)"]),
    ],
    ids=["moe", "yarn-and-gelu", "qwen2-some-layers-slide"],
)
def test_what_tabula_cannot_express_is_refused_with_every_reason(tmp_path, capsys, architecture, changes, reasons):
    config(architecture, **changes).save_pretrained(tmp_path / "hf")  # refused from config.json alone
    write_tokenizer(tmp_path / "hf" / "tokenizer.json")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "spec.yaml")]) == 2
    err = capsys.readouterr().err
    assert "cannot be expressed in tabula exactly" in err and "Traceback" not in err
    for reason in reasons:
        assert f"  config.json: {reason}" in err, err
    assert not (tmp_path / "spec.yaml").exists()


def test_an_architecture_tabula_does_not_import_is_named(tmp_path, capsys):
    transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB).save_pretrained(tmp_path / "hf")
    write_tokenizer(tmp_path / "hf" / "tokenizer.json")
    assert main(["import", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "config.json: architectures: " in err and "tabula imports DeepseekV3ForCausalLM, LlamaForCausalLM" in err


def test_a_checkpoint_whose_tie_disagrees_with_its_weights_is_refused(tmp_path, capsys):
    checkpoint(tmp_path / "hf", "llama")  # untied: its own lm_head
    import json

    config_file = tmp_path / "hf" / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"tie_word_embeddings": True}))
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "spec.yaml")]) == 2
    err = capsys.readouterr().err
    assert "tie: lm_head.weight differs from the embedding" in err and not (tmp_path / "spec.yaml").exists()


def test_tensors_without_a_tabula_name_are_refused_and_those_transformers_ignores_are_skipped(tmp_path, capsys):
    import json

    from safetensors.torch import load_file, save_file

    hf = checkpoint(tmp_path / "hf", "deepseek_v3")
    weights = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(weights)
    extra = {"model.layers.2.eh_proj.weight": torch.zeros(4, 4),  # a multi-token-prediction layer after the last
             "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(4)}  # a buffer older checkpoints saved
    save_file(tensors | extra, weights, metadata={"format": "pt"})
    config_file = tmp_path / "hf" / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"num_nextn_predict_layers": 1}))
    _, model = imported(tmp_path, tmp_path / "hf")
    assert_same_logits(model, hf)
    save_file(tensors | {"model.layers.1.self_attn.q_c_proj.weight": torch.zeros(4, 4)}, weights, metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "again.yaml")]) == 2
    assert "tensor model.layers.1.self_attn.q_c_proj.weight has no tabula name" in capsys.readouterr().err


def test_weights_that_do_not_fit_an_edited_spec_are_refused_by_name(tmp_path):
    checkpoint(tmp_path / "hf", "llama")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "spec.yaml")]) == 0
    spec = load_spec(tmp_path / "spec.yaml", overrides=["model.block.mlp.hidden=40", "model.n_layers=3"])
    with pytest.raises(WeightsRefused) as refused:
        check_pretrained(spec, VOCAB)
    problems = refused.value.problems
    assert "shape: blocks.0.mlp.gate.weight is (40, 32) in the spec's model, (48, 32) in the checkpoint" in problems
    assert "missing: blocks.2.attn.q_proj.weight" in problems
    assert str(refused.value).startswith("model.init.path: the weights in hf do not fit the spec's model:")
    model = build_model(spec, vocab_size=VOCAB).materialize("cpu", 0)
    with pytest.raises(WeightsRefused):
        load_pretrained(model, spec)


def test_a_sentencepiece_only_tokenizer_without_out_is_refused_in_one_line(tmp_path, capsys):
    checkpoint(tmp_path / "hf", "llama")
    (tmp_path / "hf" / "tokenizer.json").rename(tmp_path / "hf" / "tokenizer.model")
    capsys.readouterr()  # transformers' progress bar while saving
    assert main(["import", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only a sentencepiece tokenizer.model" in err


def test_a_sentencepiece_only_tokenizer_is_converted_next_to_the_spec(tmp_path, capsys):
    import json

    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    from tokenizers import Tokenizer

    checkpoint(tmp_path / "hf", "llama")
    (tmp_path / "hf" / "tokenizer.json").unlink()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog {i % 7}" for i in range(200)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "hf" / "tokenizer"), vocab_size=60,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "eos_token": "</s>"}))
    (tmp_path / "hf" / "tokenizer.vocab").unlink()
    capsys.readouterr()
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "spec" / "llama.yaml")]) == 0
    assert "converted" in capsys.readouterr().err
    spec = load_spec(tmp_path / "spec" / "llama.yaml")
    assert (spec.data.tokenizer.path, spec.data.tokenizer.eos_token, spec.data.tokenizer.pad_token) == ("tokenizer.json", "</s>", "</s>")
    converted = Tokenizer.from_file(str(tmp_path / "spec" / "tokenizer.json"))
    original = spm.SentencePieceProcessor(model_file=str(tmp_path / "hf" / "tokenizer.model"))
    text = "the lazy fox 12 jumps over the dog"
    assert converted.encode(text, add_special_tokens=False).ids == original.encode(text)


def test_a_hub_id_not_in_the_cache_fails_in_one_line(tmp_path, capsys):
    assert main(["import", "hf:nobody/nothing"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hf:nobody/nothing is not in the Hugging Face cache" in err and "hf download nobody/nothing" in err
    raw = copy.deepcopy(BASE)
    raw["model"]["init"] = {"kind": "from", "path": "hf:nobody/nothing"}
    YAML(typ="safe").dump(raw, tmp_path / "spec.yaml")
    with pytest.raises(RunInputError) as error:
        check_pretrained(load_spec(tmp_path / "spec.yaml"), VOCAB)
    assert "\n" not in str(error.value) and str(error.value).startswith("model.init.path: hf:nobody/nothing is not in the Hugging Face cache")


def test_a_hub_id_resolves_through_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / revision
    hf = checkpoint(snapshot, "qwen2")
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec, model = imported(tmp_path, "hf:org/tiny")
    assert spec.model.init.path == "hf:org/tiny" and spec.name == "tiny"
    assert_same_logits(model, hf)


def test_a_tabula_run_is_a_source_of_weights(tmp_path):
    """A pretrained tabula run can be fine-tuned: its newest intact checkpoint is loaded, by tabula's names."""
    import json

    from tabula.runtime.checkpoint import save_weights

    spec = write_spec(tmp_path / "tiny.yaml")
    trained = build_model(spec, device="cpu")
    folder = tmp_path / "runs" / "pre" / "checkpoints" / "step-000004"
    folder.mkdir(parents=True)
    save_weights(trained.state_dict(), folder / "model.safetensors")
    (folder / "state.json").write_text(json.dumps({"step": 4, "tokens": 256, "vocab_size": VOCAB}))
    for path in ("runs/pre", "runs/pre/checkpoints/step-000004"):
        tuned = load_spec(tmp_path / "tiny.yaml", overrides=[f"model.init={{kind: from, path: {path}}}"])
        model = build_model(tuned, vocab_size=VOCAB).materialize("cpu", 1)
        load_pretrained(model, tuned)
        for name, tensor in trained.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    wider = load_spec(tmp_path / "tiny.yaml", overrides=["model.init={kind: from, path: runs/pre}", "model.block.mlp.hidden=64"])
    with pytest.raises(WeightsRefused) as refused:
        check_pretrained(wider, VOCAB)
    assert "shape: blocks.1.mlp.down.weight is (64, 64) in the spec's model, (64, 96) in the checkpoint" in refused.value.problems
