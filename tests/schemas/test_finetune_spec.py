"""`train.finetune:` in the spec: globs checked against the model's own names where they are written, methods
that do not fit the model refused with the spec path, defaults that load."""

from __future__ import annotations

import pytest

from schema_texts import MINIMAL
from tabula.schemas.errors import SpecErrors
from tabula.schemas.finetune import glob_matches, summarise_names
from tabula.schemas.loader import load_spec_text


def with_finetune(finetune: str, text: str = MINIMAL):
    return text.replace("  budget: {tokens: 1M}\n", f"  budget: {{tokens: 1M}}\n  finetune: {finetune}\n")


def only_error(text: str):
    with pytest.raises(SpecErrors) as raised:
        load_spec_text(text)
    (error,) = raised.value.errors
    return error


@pytest.mark.parametrize("pattern, name, matches", [
    ("blocks.*.attn.q_proj", "blocks.0.attn.q_proj", True),
    ("mlp.*", "blocks.3.mlp.up", True),  # a part after a dot, as peft matches by suffix
    ("q_proj", "blocks.1.attn.q_proj", True),
    ("embed.*", "pos_embed.weight", False),  # whole parts only
    ("blocks.0.*", "blocks.10.attn.q_proj", False),
    ("attn.q*", "blocks.0.attn.q_proj", True),
])
def test_globs_match_a_name_whole_or_after_a_dot(pattern, name, matches):
    assert glob_matches(pattern, name) is matches


def test_defaults_load_and_every_method_is_accepted():
    for finetune in ("{kind: lora}", "{kind: dora, rank: 4, rslora: true}", "{kind: qlora, quant_type: fp4}",
                     "{kind: prompt_tuning, virtual_tokens: 8}", "{kind: prefix_tuning, projection: true}", "{kind: full}"):
        text = with_finetune(finetune).replace("max_seq_len: 128", "max_seq_len: 256").replace(
            "    stdlib: {kind: python_stdlib}\n", "    stdlib: {kind: python_stdlib}\n  curriculum: [{seq_len: 128}]\n")
        spec = load_spec_text(text)
        assert spec.train.finetune is not None
    assert load_spec_text(with_finetune("{kind: lora}")).train.finetune.targets == ["attn.*", "mlp.*"]


def test_a_target_that_matches_no_linear_layer_names_them_and_the_closest():
    error = only_error(with_finetune("{kind: lora, targets: [mlp.*, attn.qproj]}"))
    assert (error.dotted_path, error.line) == ("train.finetune.targets.1", 17)
    assert error.message == ("'attn.qproj' matches no linear layer (did you mean blocks.*.attn.q_proj?); the linear layers are: "
                             "blocks.*.attn.q_proj, blocks.*.attn.k_proj, blocks.*.attn.v_proj, blocks.*.attn.o_proj, "
                             "blocks.*.mlp.gate, blocks.*.mlp.up, blocks.*.mlp.down (blocks.* is blocks 0-1)")


def test_a_norm_is_no_linear_layer_and_a_tied_head_is_not_one_either():
    assert "matches no linear layer" in only_error(with_finetune("{kind: dora, targets: [attn_norm]}")).message
    assert "matches no linear layer" in only_error(with_finetune("{kind: lora, targets: [lm_head]}")).message
    untied = MINIMAL.replace("  max_seq_len: 128\n", "  max_seq_len: 128\n  tie_embeddings: false\n")
    assert load_spec_text(with_finetune("{kind: lora, targets: [lm_head]}", untied)).train.finetune.targets == ["lm_head"]


def test_a_frozen_glob_that_matches_no_parameter_is_an_error():
    error = only_error(with_finetune("{kind: full, freeze: [embed.*, blocks.7.*]}"))
    assert error.dotted_path == "train.finetune.freeze.1"
    assert error.message.startswith("'blocks.7.*' matches no parameter") and "embed.weight" in error.message


def test_virtual_tokens_must_fit_beside_the_sequences():
    error = only_error(with_finetune("{kind: prompt_tuning, virtual_tokens: 8}"))
    assert error.dotted_path == "train.finetune.virtual_tokens"  # the first stage's seq_len defaults to max_seq_len
    assert "set data.curriculum.0.seq_len to at most 120" in error.message
    text = with_finetune("{kind: prefix_tuning, virtual_tokens: 8}").replace(
        "    stdlib: {kind: python_stdlib}\n", "    stdlib: {kind: python_stdlib}\n  curriculum: [{until_tokens: 512k, seq_len: 64}, {seq_len: 128}]\n")
    assert only_error(text).dotted_path == "data.curriculum.1.seq_len"


def test_prefix_tuning_needs_keys_and_values_of_one_width():
    mla = MINIMAL.replace("{kind: gqa, n_heads: 4, n_kv_heads: 2}", "{kind: mla, n_heads: 4, kv_latent: 16, rope_head_dim: 4}")
    error = only_error(with_finetune("{kind: prefix_tuning, virtual_tokens: 4}", mla))
    assert error.dotted_path == "train.finetune.kind" and "mha, gqa, mqa" in error.message
    assert load_spec_text(with_finetune("{kind: lora, targets: [kv_down, kv_up, k_rope]}", mla))


def test_names_are_summarised_by_block():
    names = ["embed.weight", "blocks.0.attn.q_proj.weight", "blocks.1.attn.q_proj.weight", "norm.weight"]
    assert summarise_names(names) == "embed.weight, blocks.*.attn.q_proj.weight, norm.weight (blocks.* is blocks 0-1)"
