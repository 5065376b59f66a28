"""model.vision in the compiler: the built encoder holds what the spec says (names, shapes, counts), its
projected patches land at the image tokens, the plan counts it, and export writes the language model only."""

from __future__ import annotations

import copy
import math

import torch
from compiler_specs import BASE
from ruamel.yaml import YAML

from tabula.cli import main
from tabula.compiler import build_model, make_plan
from tabula.compiler.estimate import count_parameters, estimate
from tabula.compiler.hf import hf_notes, hf_state_dict
from tabula.compiler.vision import ImageInput
from tabula.schemas.spec import Spec

VISION = {"encoder": {"kind": "vit", "image_size": 16, "patch_size": 4, "d_model": 32, "n_layers": 2, "n_heads": 2},
          "projector": {"kind": "mlp"}}


def vision_raw(**vision):
    raw = copy.deepcopy(BASE)
    raw["model"]["vision"] = {**copy.deepcopy(VISION), **vision}
    raw["data"]["sources"] = {"text": {"kind": "image_text", "paths": ["shapes"]}}
    return raw


def test_the_built_encoder_registers_the_spec_parameters_in_order():
    for projector in ("linear", "mlp"):
        spec = Spec.model_validate(vision_raw(projector={"kind": projector}))
        model = build_model(spec, device="cpu")
        built = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
        assert built == [(name, tuple(shape)) for name, shape in spec.model.parameter_shapes(97)]
        vision = sum(p.numel() for name, p in model.named_parameters() if name.startswith("vision."))
        counted = count_parameters(spec.model, 97)
        assert counted.vision == vision > 0 and counted.total == sum(p.numel() for p in model.parameters())


def test_patches_replace_the_image_tokens_embeddings_and_text_gradients_reach_the_encoder():
    spec = Spec.model_validate(vision_raw())
    model = build_model(spec, device="cpu")
    pixels = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    index = torch.full((2, 20), -1)
    index[0, 2:18] = torch.arange(16)  # a whole image
    index[1, :5] = torch.arange(27, 32)  # the end of the second image: a window that cut it
    images = ImageInput(pixels, index, 16)
    x = torch.randn(2, 20, 64)
    assert model.vision is not None
    placed = model.vision.place(x, images)
    patches = model.vision(pixels).reshape(-1, 64)
    at = index >= 0
    torch.testing.assert_close(placed[at], patches[index[at]])
    assert torch.equal(placed[~at], x[~at])
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    targets = torch.where(at, -100, ids)
    _, loss = model(ids, targets, images=images)
    loss.backward()
    assert model.vision.encoder.patch_embed.weight.grad.abs().sum() > 0
    with torch.no_grad():  # the tokens before any image see none of it (causal); those after do
        plain = model(ids)
        seen = model(ids, images=images)
    assert torch.equal(plain[0, :2], seen[0, :2])
    assert not torch.allclose(plain[0, 18:], seen[0, 18:])


def test_the_plan_counts_the_encoder(tmp_path):
    spec = Spec.model_validate(vision_raw())
    plain = Spec.model_validate({**copy.deepcopy(BASE)})
    plan = make_plan(spec, vocab_size=97, device_type="cpu")
    ours, theirs = estimate(spec, plan), estimate(plain, make_plan(plain, vocab_size=97, device_type="cpu"))
    vision = ours.parameters.vision
    assert ours.parameters.total == theirs.parameters.total + vision and ours.parameters.matmul == theirs.parameters.matmul
    assert ours.flops_per_token == theirs.flops_per_token  # the language model's, per token
    assert ours.vision_flops_per_image == spec.model.vision.flops_per_image(64) > 6 * 16 * (vision - 16 * 32 - 2 * 64 * 64)
    assert math.isclose(ours.total_flops - theirs.total_flops, ours.vision_flops_per_image * plan.total_tokens / 16, rel_tol=1e-9)
    path = tmp_path / "vision.yaml"
    YAML(typ="safe").dump(vision_raw(), path)
    assert main(["plan", str(path), "--device", "cpu"]) == 0


def test_export_writes_the_language_model_and_says_the_encoder_is_not_exported(tmp_path, capsys):
    from safetensors.torch import load_file
    from tokenizers import Tokenizer, models

    raw = vision_raw()
    YAML(typ="safe").dump(raw, tmp_path / "vision.yaml")
    vocab = {f"w{i}": i for i in range(94)} | {"<|endoftext|>": 94, "<|pad|>": 95, "<|image|>": 96}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    tokenizer.add_special_tokens(["<|endoftext|>", "<|pad|>", "<|image|>"])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    spec = Spec.model_validate(raw)
    model = build_model(spec, device="cpu").eval()
    assert not any(name.startswith("vision.") for name in hf_state_dict(spec.model, model.state_dict()))
    assert main(["export", str(tmp_path / "vision.yaml"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    err = capsys.readouterr().err
    assert "warning: the image encoder and projector (model.vision) are not exported" in err and hf_notes(spec.model)
    # each weight draws from its own (seed, name) generator: the same spec without vision has the same language model
    plain = Spec.model_validate(copy.deepcopy(BASE))
    expected = hf_state_dict(plain.model, build_model(plain, device="cpu").state_dict())
    written = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert written.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(written[name], tensor), name
