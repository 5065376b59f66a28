"""DeepSpeed's config classes and estimators through tabula, and the resume and failure bookkeeping of the
DeepSpeed runtime, without starting any rank."""

from __future__ import annotations

import json

import pytest

from tabula.runtime.deepspeed_check import check_config, deepspeed_memory_estimates

GOOD = {
    "train_batch_size": 16,
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "zero_optimization": {"stage": 2},
    "gradient_clipping": 1.0,
}


def test_a_good_config_has_no_problems():
    assert check_config(GOOD) == []
    assert check_config(GOOD, world_size=2) == []


def test_the_lowered_config_of_the_zero_specs_passes(specs_dir):
    from tabula.compiler import make_plan
    from tabula.compiler.deepspeed_config import deepspeed_config
    from tabula.schemas.loader import load_spec

    for name in ("zero2.yaml", "zero3-offload.yaml"):
        spec = load_spec(specs_dir / name, overrides=["model.vocab_size=8192"])
        plan = make_plan(spec, vocab_size=8192)
        assert check_config(deepspeed_config(spec, plan), world_size=plan.world_size) == [], name


def test_batch_arithmetic_is_checked_at_the_run_world_size():
    problems = check_config(GOOD, world_size=3)
    assert len(problems) == 1 and "16 != 4 * 2 * 3" in problems[0]


@pytest.mark.parametrize(
    "zero, expected",
    [
        ({"stage": 5}, "stage"),
        ({"stage": 2, "offload_optimizr": {"device": "cpu"}}, "offload_optimizr: Extra inputs are not permitted"),
        ({"stage": 2, "offload_optimizer": {"device": "gpu"}}, "offload_optimizer.device"),
    ],
)
def test_zero_section_errors_name_the_key(zero, expected):
    problems = check_config({**GOOD, "zero_optimization": zero})
    assert len(problems) == 1 and problems[0].startswith("DeepSpeedZeroConfig:") and expected in problems[0], problems


def test_unknown_top_level_keys_and_conflicts_are_reported():
    assert check_config({**GOOD, "zero_optimisation": {"stage": 2}}) == [
        "unknown top-level key 'zero_optimisation': DeepSpeed would ignore it silently"
    ]
    assert check_config({**GOOD, "fp16": {"enabled": True}, "bf16": {"enabled": True}}) == [
        "bfloat16 and fp16 modes cannot be simultaneously enabled"
    ]
    assert "not a multiple" in check_config({**GOOD, "train_batch_size": 15})[0]
    assert check_config([1, 2]) == ["a DeepSpeed config is a dict (JSON object), found list"]


def test_deepspeed_estimates_follow_its_formulas():
    rows = {r.label: r for r in deepspeed_memory_estimates(1_000_000, 100_000, world_size=2)}
    assert set(rows) == {"ZeRO-1", "ZeRO-2", "ZeRO-1 offload optimizer", "ZeRO-2 offload optimizer", "ZeRO-3",
                         "ZeRO-3 offload optimizer", "ZeRO-3 offload optimizer+params"}
    # ZeRO-2 on 2 GPUs: 2 bytes of 16-bit weights + 18 bytes of sharded state a parameter, over 2
    assert rows["ZeRO-2"].per_device_bytes == 2 * 1_000_000 + 18 * 1_000_000 // 2
    assert rows["ZeRO-3"].per_device_bytes == 4 * 100_000 + 18 * 1_000_000 // 2
    assert rows["ZeRO-3 offload optimizer+params"].per_device_bytes == 4 * 100_000
    assert rows["ZeRO-2 offload optimizer"].per_device_bytes < rows["ZeRO-2"].per_device_bytes


# ---------------------------------------------------------------- resume moves and failure bookkeeping


def test_moves_between_layouts():
    from tabula.runtime.reshard import describe_move

    layout = {"zero_stage": 2, "world_size": 2}
    assert not describe_move(layout, 2, 2).changes
    assert describe_move(layout, 1, 2).text == "2 ranks ZeRO-2 -> 2 ranks ZeRO-1"
    assert describe_move(layout, 2, 1).changes
    assert not describe_move({"zero_stage": 0, "world_size": 2}, 0, 1).changes  # whole state: loads natively


def test_checkpoints_are_told_apart(tmp_path):
    from tabula.runtime.reshard import LOCAL, ReshardError, prepare_resume, read_layout

    with pytest.raises(ReshardError, match="neither a DeepSpeed checkpoint"):
        prepare_resume(tmp_path, 2, 2)
    (tmp_path / "optimizer.pt").write_bytes(b"")
    assert read_layout(tmp_path) == LOCAL
    with pytest.raises(ReshardError, match="its spec is needed"):
        prepare_resume(tmp_path, 2, 2)


def test_launcher_writes_the_failing_ranks_error_when_rank_0_could_not(tmp_path):
    from tabula.runtime.launch import _finish
    from tabula.runtime.rank import write_error

    (tmp_path / "events.jsonl").write_text(json.dumps({"kind": "train", "time": 1.0, "step": 7, "tokens": 3584}) + "\n")
    write_error(tmp_path, 1, "rank 1: ValueError: the data shard is truncated\nTraceback ...")
    out = []
    outcome = _finish(tmp_path, [1], [], type("Out", (), {"write": lambda self, text: out.append(text)})())
    end = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[-1])
    assert (outcome.reason, outcome.step, outcome.error) == ("failed", 7, "rank 1: ValueError: the data shard is truncated")
    assert end == {**end, "kind": "end", "step": 7, "tokens": 3584, "reason": "failed",
                   "error": "rank 1: ValueError: the data shard is truncated"}
    assert "rank 1: ValueError" in "".join(out)


def test_launcher_names_a_killed_rank(tmp_path):
    from tabula.runtime.launch import _finish

    (tmp_path / "events.jsonl").write_text("")
    outcome = _finish(tmp_path, [-9], [], type("Out", (), {"write": lambda self, text: None})())
    end = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[-1])
    assert outcome.reason == "failed" and end["error"] == "a rank was killed by SIGKILL without reporting an error"
    assert outcome.error == end["error"]


def test_launcher_keeps_rank_0s_end_event(tmp_path):
    from tabula.runtime.launch import _finish

    end = {"kind": "end", "time": 1.0, "step": 3, "tokens": 1536, "reason": "stopped", "error": None}
    (tmp_path / "events.jsonl").write_text(json.dumps(end) + "\n")
    outcome = _finish(tmp_path, [], [], None)
    assert (outcome.reason, outcome.step, outcome.tokens, outcome.error) == ("stopped", 3, 1536, None)
    assert (tmp_path / "events.jsonl").read_text().count("\n") == 1


def test_hostfile_slots_give_the_world_size(tmp_path):
    from tabula.runtime.launch import hostfile_slots, rank_command

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nworker-1 slots=4\nworker-2 slots=4\n")
    assert hostfile_slots(hostfile) == 8
    hostfile.write_text("worker-1 4\n")
    assert hostfile_slots(hostfile) is None
    assert hostfile_slots(tmp_path / "absent") is None
    multi = rank_command("s.yaml", tmp_path, 8, hostfile=str(hostfile), port=29600)
    assert multi[3:7] == ["deepspeed.launcher.runner", "--hostfile", str(hostfile), "--master_port"]
    local = rank_command("s.yaml", tmp_path, 2, overrides=["a.b=1"], max_steps=3, port=29600)
    assert local[3] == "deepspeed.launcher.launch"
    assert local[local.index("--module") + 1] == "tabula.runtime.rank"
    assert local[-4:] == ["--override", "a.b=1", "--max-steps", "3"]
