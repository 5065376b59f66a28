"""Image-text data: the three layouts prepare into image tokens then captions, each image stored once and
found again from the batch's positions, the loss on text only; and the toy shapes task learns what a
text-only baseline cannot (the caption's colour and shape are in the image only)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime_helpers import one_thread_fixture, train_in
from tabula.runtime.data import DataError, Sampler, image_rows, prepare, validation_batches
from tabula.runtime.data.images import decode_image
from vision_toy import SEQ_LEN, vision_spec, write_shapes

one_thread = one_thread_fixture()


class Stage:
    index, start_tokens, end_tokens, seq_len, mix = 0, 0, 10**9, SEQ_LEN, {"shapes": 1.0}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes") / "shapes", 60)


@pytest.fixture(scope="module")
def prepared(shapes, tmp_path_factory):
    return prepare(vision_spec(shapes), cache_dir=tmp_path_factory.mktemp("cache"))


def test_an_image_document_is_its_image_tokens_then_its_caption(prepared, shapes):
    shard = prepared.train["shapes"]
    assert prepared.n_patches == 16 and prepared.tokenizer.id_to_token(prepared.image_id) == "<|image|>"
    assert shard.images is not None and shard.images.shape == (shard.n_documents, 16, 16, 3)
    assert shard.n_documents + prepared.val["shapes"].n_documents == 60
    ends = shard.document_ends.astype(np.int64)
    files = sorted(shapes.glob("*.png"))
    held = [i for i in range(60) if int((i + 1) * 0.05 + 0.5) > int(i * 0.05 + 0.5)]  # the pipeline's spread-out 5%
    train_files = [f for i, f in enumerate(files) if i not in held]
    for k in (0, 1, shard.n_documents - 1):
        start = ends[k - 1] if k else 0
        tokens = shard.tokens[start:ends[k]]
        assert (tokens[:16] == prepared.image_id).all() and prepared.image_id not in tokens[16:]
        assert tokens[-1] == prepared.eos_id
        caption = train_files[k].with_suffix(".txt").read_text().strip()
        assert prepared.tokenizer.decode(tokens[16:-1].tolist()) == caption
        assert np.array_equal(shard.images[k], decode_image(train_files[k].read_bytes(), 16))


def test_batches_carry_each_image_tokens_patch_and_no_loss_on_images(prepared):
    sampler = Sampler(prepared, [Stage()], seed=1)
    shard = prepared.train["shapes"]
    for _ in range(3):
        batch = sampler.next_batch(8, SEQ_LEN)
        images = batch.images
        assert images is not None and images.n_patches == 16
        at = batch.input_ids == prepared.image_id
        assert torch.equal(images.patch_index >= 0, at)
        assert (batch.targets[torch.cat([at[:, 1:], at[:, -1:]], dim=1) & (batch.targets == prepared.image_id)] == -100).all()
        assert not (batch.targets == prepared.image_id).any()  # never a target: the loss is on text only
        assert (batch.targets[~at & (batch.targets != -100)] != -100).all()
        # every placed patch is the pixels of its document's image, at its patch
        for row in range(8):
            for t in torch.nonzero(at[row]).flatten().tolist()[:20]:
                image, patch = divmod(int(images.patch_index[row, t]), 16)
                pixels = images.pixels[image].numpy()
                matches = [k for k in range(shard.n_documents) if np.array_equal(shard.images[k], pixels)]
                assert matches, "a batch image is one of the shard's"
                assert 0 <= patch < 16
        # within a row an image's patches run on in order: from 0 after an end of document, from where the
        # window cut it at the row's start
        for row in range(8):
            index = images.patch_index[row]
            for t in range(1, SEQ_LEN):
                if index[t] >= 0 and index[t - 1] >= 0 and index[t] // 16 == index[t - 1] // 16:
                    assert index[t] == index[t - 1] + 1
                elif index[t] >= 0:
                    assert index[t] % 16 == 0 and batch.input_ids[row, t - 1] == prepared.eos_id
    # the last image token of a document predicts its caption's first token, which is trained
    first_caption = (batch.input_ids == prepared.image_id) & (batch.targets != -100)
    assert first_caption.any()


def test_a_resumed_sampler_gives_the_same_images(prepared):
    sampler = Sampler(prepared, [Stage()], seed=4)
    sampler.next_batch(8, SEQ_LEN)
    resumed = Sampler(prepared, [Stage()], seed=4)
    resumed.load_state_dict(sampler.state_dict())
    ours, theirs = sampler.next_batch(8, SEQ_LEN).images, resumed.next_batch(8, SEQ_LEN).images
    assert ours is not None and theirs is not None
    assert torch.equal(ours.pixels, theirs.pixels) and torch.equal(ours.patch_index, theirs.patch_index)


def test_micro_batches_get_their_own_images_renumbered(prepared):
    batch = Sampler(prepared, [Stage()], seed=2).next_batch(8, SEQ_LEN)
    whole = batch.images
    for lo, hi in ((0, 3), (3, 8), (5, 6)):
        part = image_rows(batch, lo, hi)["images"]
        index = part.patch_index
        assert index.shape == (hi - lo, SEQ_LEN) and part.pixels.size(0) == len(torch.unique(index[index >= 0] // 16))
        at = index >= 0
        theirs = whole.pixels[whole.patch_index[lo:hi][at] // 16]
        assert torch.equal(part.pixels[index[at] // 16], theirs) and torch.equal(index[at] % 16, whole.patch_index[lo:hi][at] % 16)
    assert image_rows(validation_batches(prepared, 4 * SEQ_LEN, SEQ_LEN, 4)[0])["images"].pixels.dtype == torch.uint8


def test_jsonl_and_webdataset_layouts_prepare_the_same_data(prepared, shapes, tmp_path):
    files = sorted(shapes.glob("*.png"))
    records = [{"picture": f"../{shapes.name}/{f.name}", "text": f.with_suffix(".txt").read_text()} for f in files]
    jsonl = tmp_path / "records" / "shapes.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / shapes.name).symlink_to(shapes)
    with tarfile.open(tmp_path / "shapes-000.tar", "w") as tar:
        for f in files:
            for member in (f, f.with_suffix(".txt")):
                info = tarfile.TarInfo(f"samples/{member.name}")
                data = member.read_bytes()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    cache = tmp_path / "cache"
    for layout in (vision_spec(jsonl, format="jsonl", image_field="picture", caption_field="text"),
                   vision_spec(tmp_path / "shapes-000.tar", format="webdataset")):
        other = prepare(layout, cache_dir=cache)
        for split in ("train", "val"):
            ours, theirs = prepared.__dict__[split]["shapes"], other.__dict__[split]["shapes"]
            assert np.array_equal(ours.tokens, theirs.tokens) and np.array_equal(ours.images, theirs.images)


def test_a_bad_sample_fails_naming_it_or_is_skipped(shapes, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in sorted(shapes.glob("0000*")):
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "00001.png").write_bytes(b"not a png")
    (broken / "00002.txt").unlink()
    with pytest.raises(DataError, match=r"00001.png: cannot read the image|00002.png: no caption file"):
        prepare(vision_spec(broken), cache_dir=tmp_path / "cache")
    skipped = prepare(vision_spec(broken, on_error="skip"), cache_dir=tmp_path / "cache")
    report = skipped.report["sources"]["shapes"]
    assert report["train"]["documents"] + report["val"]["documents"] == 8  # 10 pairs, two bad
    warnings = "\n".join(skipped.report["warnings"])
    assert "00001.png: cannot read the image" in warnings and "00002.png: no caption file" in warnings


def test_the_report_counts_images_and_a_damaged_images_file_rebuilds_the_entry(shapes, tmp_path):
    spec = vision_spec(shapes)
    first = prepare(spec, cache_dir=tmp_path)
    assert first.report["sources"]["shapes"]["images"] == {"train": first.train["shapes"].n_documents, "val": first.val["shapes"].n_documents}
    kept = np.array(first.train["shapes"].images)
    path = first.directory / "train-shapes.images"
    path.write_bytes(path.read_bytes()[:-1])
    again = prepare(spec, cache_dir=tmp_path)
    assert not again.cache_hit and np.array_equal(again.train["shapes"].images, kept)


def test_the_toy_shapes_task_learns_what_a_text_only_baseline_cannot(tmp_path):
    """Same model, data and steps; the baseline's images are blank, so it can only guess colour and shape."""
    losses = {}
    for blank in (False, True):
        folder = write_shapes(tmp_path / f"shapes-{blank}", 2000, blank=blank)  # enough not to learn them by heart
        spec = vision_spec(folder, steps=250)
        prepared = prepare(spec, cache_dir=tmp_path / "cache")
        outcome, events = train_in(spec, prepared, tmp_path / f"run-{blank}")
        assert outcome.reason == "finished"
        losses[blank] = [e["val_loss"] for e in events if e["kind"] == "eval"][-1]
    # ~0.5x measured over model seeds (0.49-0.55): colour is read from the image, shape partly
    assert losses[False] < 0.7 * losses[True], losses


def test_a_pretrained_text_model_takes_a_new_image_encoder(shapes, tmp_path):
    """model.init from a text checkpoint (Hugging Face Llama): its weights are loaded, the encoder and projector
    are drawn as new (LLaVA's start)."""
    from tabula.compiler import build_model, make_plan
    from tabula.compiler.hf import write_hf
    from tabula.runtime.build import build_training_model
    from tabula.schemas.spec import Spec

    raw = vision_spec(shapes).model_dump(mode="json")
    raw["model"].update(vocab_size=280, block={"attention": {"kind": "mha", "n_heads": 2}, "mlp": {"kind": "swiglu", "hidden": 64}})
    text_spec = Spec.model_validate({**raw, "seed": 99})  # other weights than the drawn ones
    text = build_model(text_spec, device="cpu").state_dict()
    write_hf(tmp_path / "llama", text_spec.model, text, 280)  # the language model alone
    raw["model"]["init"] = {"kind": "from", "path": str(tmp_path / "llama")}
    spec = Spec.model_validate(raw)
    drawn = build_model(spec, device="cpu").state_dict()  # what the init draws, nothing loaded
    model = build_training_model(spec, make_plan(spec, vocab_size=280, device_type="cpu"), torch.device("cpu"))
    for name, tensor in model.state_dict().items():
        expected = drawn[name] if name.startswith("vision.") else text[name]
        assert torch.allclose(tensor, expected), name
