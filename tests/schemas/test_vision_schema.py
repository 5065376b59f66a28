"""The spec side of image-text training: model.vision and kind: image_text sources, the checks that tie
them together (each at the path that is wrong), the encoder's torch-free shapes, and the hash of specs
without vision left as it was."""

from __future__ import annotations

import pytest

from schema_texts import MINIMAL
from tabula.schemas.blocks.costs import count
from tabula.schemas.canonical import canonical_yaml, spec_hash
from tabula.schemas.errors import SpecErrors
from tabula.schemas.loader import load_spec, load_spec_text

VISION = MINIMAL.replace(
    "    mlp: {kind: swiglu, hidden: 128}\n",
    "    mlp: {kind: swiglu, hidden: 128}\n"
    "  vision:\n"
    "    encoder: {kind: vit, image_size: 32, patch_size: 8, d_model: 48, n_layers: 2, n_heads: 4}\n"
    "    projector: {kind: linear}\n",
).replace("    stdlib: {kind: python_stdlib}\n", "    shapes: {kind: image_text, paths: [shapes], format: folder}\n")


def only_error(text: str):
    with pytest.raises(SpecErrors) as raised:
        load_spec_text(text)
    (error,) = raised.value.errors
    return error


def test_a_vision_spec_loads_and_its_canonical_form_loads_back():
    spec = load_spec_text(VISION)
    vision = spec.model.vision
    assert vision is not None and vision.n_patches == 16 and vision.image_token == "<|image|>"
    assert spec.data.image_sources == ["shapes"]
    assert load_spec_text(canonical_yaml(spec)) == spec


def test_a_spec_without_vision_keeps_its_canonical_form_and_hash():
    spec = load_spec_text(MINIMAL)
    assert "vision" not in canonical_yaml(spec)
    # the hash MINIMAL had before model.vision and kind: image_text existed
    assert spec_hash(spec) == "985a3b3d083d50440868e31b00c7fc6b444b64eda1ecd9475cfbb87238c1ce01"
    assert spec_hash(load_spec_text(VISION)) != spec_hash(spec)


@pytest.mark.parametrize(("old", "new", "path", "message"), [
    ("patch_size: 8", "patch_size: 5", "model.vision.encoder.patch_size", "image_size 32 is not a multiple of patch_size 5"),
    ("n_heads: 4}", "n_heads: 5}", "model.vision.encoder.n_heads", "d_model 48 is not a multiple of n_heads 5"),
    ("projector: {kind: linear}", "projector: {kind: perceiver}", "model.vision.projector.kind", "expected 'linear' or 'mlp'"),
    ("format: folder", "format: zip", "data.sources.shapes.format", "expected 'folder', 'webdataset' or 'jsonl'"),
    ("shapes: {kind: image_text, paths: [shapes], format: folder}", "stdlib: {kind: python_stdlib}", "model.vision",
     "no source holds any: add a kind: image_text source"),
    ("train:\n", "parallel: {backend: fsdp, world_size: 2}\ntrain:\n", "model.vision",
     "runs on the local and deepspeed (ZeRO) backends, not with the fsdp backend"),
])
def test_bad_vision_settings_name_their_path(old, new, path, message):
    assert old in VISION
    error = only_error(VISION.replace(old, new))
    assert error.dotted_path == path and message in error.message


def test_an_image_source_needs_an_encoder():
    text = MINIMAL.replace("    stdlib: {kind: python_stdlib}\n", "    shapes: {kind: image_text, paths: [shapes]}\n")
    error = only_error(text)
    assert error.dotted_path == "data.sources.shapes.kind" and "the model needs an image encoder (model.vision)" in error.message


def test_the_encoder_shapes_count_what_a_vit_holds():
    vision = load_spec_text(VISION).model.vision
    d, p, layers, patches, width = 48, 8, 2, 16, 64
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    encoder = patches * d + (3 * p * p * d + d) + layers * block + 2 * d
    assert count(vision.encoder.parameter_shapes("")) == encoder
    assert count(vision.parameter_shapes("vision.", width)) == encoder + d * width + width  # a linear projector
    assert vision.flops_per_image(width) > 6 * (encoder - patches * d) * patches  # and attention's


def test_the_shipped_vision_spec_validates(specs_dir):
    spec = load_spec(specs_dir / "vision-toy.yaml")
    assert spec.model.vision is not None and spec.data.image_sources == ["shapes"]
