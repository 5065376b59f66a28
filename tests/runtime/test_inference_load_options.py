"""load_generator's quantize= and draft= options (runtime/inference/load.py): a quantized model generates,
a draft sharing the tokenizer gives the target's own greedy output speculatively, and a draft with another
tokenizer or a quantization the device cannot do is refused with one clear line (RunInputError)."""

from __future__ import annotations

import copy

import pytest
from ruamel.yaml import YAML
from tokenizers import Tokenizer, decoders, models

from runtime_helpers import one_thread_fixture, tiny_spec_dict
from tabula.runtime.errors import RunInputError
from tabula.runtime.inference import load_generator
from tabula.runtime.inference.quantize import QuantizationUnsupported
from tabula.runtime.inference.speculative import DraftRefused, SpeculativeGenerator

one_thread = one_thread_fixture()


def write_tokenizer(path, chars: str) -> None:
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)} | {"<|endoftext|>": len(chars)}, merges=[]))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.save(str(path))


def write_spec(folder, name: str, tokenizer: str, **model) -> str:
    spec = tiny_spec_dict()
    spec["name"] = name
    spec["data"]["tokenizer"] = {"kind": "file", "path": tokenizer}
    spec["model"].update(copy.deepcopy(model))
    path = folder / f"{name}.yaml"
    with open(path, "w") as handle:
        YAML(typ="safe").dump(spec, handle)
    return str(path)


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("specs")
    write_tokenizer(folder / "letters.json", "abcdefghijklmnopqrstuvwxyz .")
    write_tokenizer(folder / "other.json", ".abcdefghijklmnopqrstuvwxyz ")  # the same characters, other ids
    small = {"d_model": 32, "n_layers": 1, "block": {"norm": {"kind": "rmsnorm"}, "attention": {"kind": "gqa", "n_heads": 2, "n_kv_heads": 1},
                                                   "mlp": {"kind": "swiglu", "hidden": 64}}}
    return {"target": write_spec(folder, "target", "letters.json"), "draft": write_spec(folder, "draft", "letters.json", **small),
            "other": write_spec(folder, "other", "other.json", **small)}


def test_a_quantized_generator_generates(specs):
    generator = load_generator(specs["target"], quantize="int8")
    assert type(generator.model.blocks[0].attn.q_proj.weight).__name__ == "Int8Tensor"
    assert len(generator.generate("abc", max_new_tokens=5, ignore_eos=True).token_ids) == 5


def test_a_draft_sharing_the_tokenizer_decodes_speculatively_as_the_target_would(specs):
    plain = load_generator(specs["target"])
    speculative = load_generator(specs["target"], draft=specs["draft"], draft_k=3)
    assert isinstance(speculative, SpeculativeGenerator)
    params = {"max_new_tokens": 16, "ignore_eos": True}
    assert speculative.generate("hello", **params).token_ids == plain.generate("hello", **params).token_ids
    assert speculative.stats.proposed > 0


def test_what_cannot_be_done_is_refused_with_one_line(specs):
    with pytest.raises(DraftRefused, match="the draft model has another tokenizer than the target") as refused:
        load_generator(specs["target"], draft=specs["other"])
    assert isinstance(refused.value, RunInputError) and "\n" not in str(refused.value)
    with pytest.raises(QuantizationUnsupported, match="runs on cpu or cuda, not on meta"):
        load_generator(specs["target"], quantize="int4", device="meta")
    with pytest.raises(RunInputError, match="not 0"):
        load_generator(specs["target"], draft=specs["draft"], draft_k=0)
