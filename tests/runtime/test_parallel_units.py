"""The fsdp backend's pieces that need no ranks: the spec's refusals, the plan's memory per rank, the
torchrun command, the tensor-parallel checks and the optimizer-state renumbering (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_specs import tiny_spec_yaml

from tabula.schemas.errors import SpecErrors
from tabula.schemas.loader import load_spec_text


def spec(*overrides: str):
    return load_spec_text(tiny_spec_yaml(micro_batch=4), overrides=list(overrides), base_dir=Path("."))


@pytest.mark.parametrize("overrides, message", [
    (["parallel.backend=deepspeed", "parallel.tensor.size=2"], "tensor parallelism (size 2) needs backend: fsdp"),
    (["parallel.backend=fsdp", "parallel.zero.stage=2"], "ZeRO settings are DeepSpeed's"),
    (["parallel.backend=fsdp", "parallel.world_size=3", "parallel.tensor.size=2"], "must divide world_size 3"),
    (["parallel.backend=fsdp", "parallel.world_size=2", "parallel.nodes=2"], "need a rendezvous endpoint"),
    (["parallel.fsdp.offload=true"], "fsdp settings need backend: fsdp"),
])
def test_the_spec_refuses_what_the_backend_cannot_run(overrides, message):
    with pytest.raises(SpecErrors) as caught:
        spec(*overrides)
    assert any(message in error.message for error in caught.value.errors), caught.value.errors


def test_the_plan_shards_memory_over_data_ranks_and_splits_it_over_tensor_ranks():
    from tabula.compiler import make_plan
    from tabula.compiler.estimate import estimate

    def memory(*overrides: str) -> dict[str, int]:
        s = spec("parallel.backend=fsdp", *overrides)
        return estimate(s, make_plan(s, vocab_size=512)).memory_per_rank

    one, two = memory(), memory("parallel.world_size=2")
    assert two["weights"] * 2 == pytest.approx(one["weights"], abs=4)
    assert two["optimizer_state"] * 2 == pytest.approx(one["optimizer_state"], abs=4)
    tensor = memory("parallel.world_size=2", "parallel.tensor.size=2")  # 1 data x 2 tensor: splits, no sharding
    assert one["weights"] / 2 < tensor["weights"] < one["weights"] * 0.52  # only the norms stay whole
    plan = make_plan(spec("parallel.backend=fsdp", "parallel.world_size=4", "parallel.tensor.size=2"), vocab_size=512)
    assert plan.world_size == 2  # the ranks that split a batch


def test_fsdp_ranks_are_started_by_torchrun_with_the_nodes_rendezvous():
    from tabula.runtime.launch import rank_command

    command = rank_command("s.yaml", Path("run"), 4, backend="fsdp", nodes=2, node_rank=1, rendezvous="10.0.0.1:29400",
                           resume_from=Path("run/checkpoints/step-000008"))
    assert command[2:4] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node_rank=1", "--nproc_per_node=2", "--master_addr=10.0.0.1", "--master_port=29400",
            "--max_restarts=0"} <= set(command)
    assert command[command.index("--module") + 1] == "tabula.runtime.rank"
    assert command[command.index("--backend") + 1] == "fsdp"
    assert command[command.index("--resume") + 1] == "run/checkpoints/step-000008"  # every node's ranks load it


def test_tensor_parallel_names_what_does_not_divide():
    from tabula.compiler import build_model
    from tabula.runtime.parallel.tensor import tensor_parallel_problems

    model = build_model(spec(), vocab_size=512)  # 4 heads (d_model 64), MLP hidden 128
    assert tensor_parallel_problems(model, 2) == []
    problems = tensor_parallel_problems(model, 3)
    assert any("vocabulary (512)" in p for p in problems) and any("heads" in p for p in problems)


def test_optimizer_state_numbered_in_group_order_is_keyed_by_name():
    from tabula.runtime.parallel.engine import _named_optimizer_state

    saved = {"state": {0: {"step": 1}, 2: {"step": 3}},
             "param_groups": [{"lr": 1.0, "params": [0, 1]}, {"lr": 2.0, "params": [2]}]}
    named = _named_optimizer_state(saved, [["a", "b"], ["c"]])
    assert named["state"] == {"a": {"step": 1}, "c": {"step": 3}}
    assert named["param_groups"] == [{"lr": 1.0, "params": ["a", "b"]}, {"lr": 2.0, "params": ["c"]}]


TORCHRUN_SUMMARY = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
tabula.runtime.rank FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_11:12:00
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 4242)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 4242
============================================================"""


def test_a_rank_killed_without_a_word_is_named_from_torchruns_summary(tmp_path):
    """SIGKILL leaves no error file: the launcher records the rank torchrun names (ranks/rank-1.error) and
    says it after rank 0's end event (which saw only a silent peer)."""
    import io

    from tabula.runtime.events import EventWriter
    from tabula.runtime.launch import _finish

    with EventWriter(tmp_path / "events.jsonl") as writer:
        writer.emit("end", 3, 1536, reason="failed", error="RankFailed: another rank stopped answering")
    out = io.StringIO()
    outcome = _finish(tmp_path, [1], TORCHRUN_SUMMARY.splitlines(), out)
    assert outcome.reason == "failed"
    assert (tmp_path / "ranks" / "rank-1.error").read_text() == "rank 1 was killed by SIGKILL without reporting an error\n"
    assert "(rank 1 was killed by SIGKILL without reporting an error)" in out.getvalue()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the CPU's refusal")
def test_cpu_offload_is_refused_on_cpu_ranks_before_anything_is_prepared(tmp_path):
    from tabula.runtime.errors import LaunchError
    from tabula.runtime.session import RunOptions, prepare_run

    with pytest.raises(LaunchError, match="parallel.fsdp.offload moves a GPU's shards to host memory"):
        prepare_run(spec("parallel.backend=fsdp", "parallel.fsdp.offload=true"),
                    RunOptions(spec_path="tiny.yaml", nproc=2, run_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
@pytest.mark.slow
def test_cpu_offload_and_bf16_train_on_a_gpu_rank(tmp_path):
    """FSDP2's CPUOffloadPolicy needs CUDA: one GPU rank, bf16 mixed precision, 2 steps."""
    import subprocess
    import sys

    (tmp_path / "tiny.yaml").write_text(tiny_spec_yaml(micro_batch=4))
    result = subprocess.run([str(Path(sys.executable).with_name("tabula")), "run", "tiny.yaml", "parallel.backend=fsdp",
                             "parallel.fsdp.offload=true", "parallel.precision=bf16", "--nproc", "1", "--headless",
                             "--max-steps", "2", "--run-dir", "offload"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**__import__("os").environ, "TABULA_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "step 2/" in result.stdout


def test_plan_report_names_the_mesh_and_the_sharding():
    from tabula.commands.plan import as_json, report_lines
    from tabula.compiler import make_plan
    from tabula.compiler.estimate import estimate

    s = spec("parallel.backend=fsdp", "parallel.world_size=4", "parallel.tensor.size=2")
    plan = make_plan(s, vocab_size=512)
    est = estimate(s, plan)
    lines = report_lines(s, plan, est, "tiny.yaml")
    assert lines[1] == "cpu, fp32, 4 ranks (fsdp: 2 data x 2 tensor), vocabulary 512"
    assert "memory per rank (fp32, FSDP2, resharded after forward, tensor parallel 2)" in lines
    shown = as_json(s, plan, est, "tiny.yaml")
    assert (shown["world_size"], shown["data_parallel"], shown["tensor_parallel"]) == (4, 2, 2)
