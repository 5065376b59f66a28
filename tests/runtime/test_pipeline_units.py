"""Pipeline checkpoints' moves decided before the ranks start (fast, no ranks): the same pipeline resumes as
saved; another pipeline, ZeRO ranks or a local checkpoint onto a pipeline are refused with one clear line."""

from __future__ import annotations

import json

import pytest

from tabula.runtime.reshard import ReshardError, prepare_resume


def checkpoint(tmp_path, layout: dict):
    (tmp_path / "deepspeed").mkdir()
    (tmp_path / "deepspeed" / "layout.json").write_text(json.dumps(layout))
    return tmp_path


PIPE = {"zero_stage": 0, "world_size": 1, "precision": "fp32", "pipeline_stages": 2, "groups": [], "stage_groups": []}


def test_the_same_pipeline_resumes_as_saved(tmp_path):
    move = prepare_resume(checkpoint(tmp_path, PIPE), 0, 2, pipeline_stages=2)
    assert not move.changes and not (tmp_path / "deepspeed" / "universal").exists()


@pytest.mark.parametrize("to_stage, to_world, stages, says", [
    (0, 2, 1, "saved by 2 pipeline stage(s) at ZeRO 0 on 1 data-parallel rank(s); this run has 1 pipeline stage(s)"),
    (0, 4, 4, "this run has 4 pipeline stage(s) at ZeRO 0 on 1"),
    (1, 4, 2, "this run has 2 pipeline stage(s) at ZeRO 1 on 2"),
])
def test_another_layout_is_refused(tmp_path, to_stage, to_world, stages, says):
    with pytest.raises(ReshardError, match=r"resumes on the same pipeline or on the local engine") as caught:
        prepare_resume(checkpoint(tmp_path, PIPE), to_stage, to_world, pipeline_stages=stages)
    assert says in str(caught.value)


def test_a_local_checkpoint_is_refused_onto_a_pipeline(tmp_path):
    (tmp_path / "optimizer.pt").write_bytes(b"")
    with pytest.raises(ReshardError, match="saved by a local run; this run has 2 pipeline stage"):
        prepare_resume(tmp_path, 0, 2, pipeline_stages=2)
