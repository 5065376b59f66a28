"""Joining DeepSpeed's process group on the CPU compiles nothing: its shared-memory all-reduce op (C++,
minutes on a first run) serves inference only, so runtime/deepspeed_engine.py skips it."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("deepspeed")

SCRIPT = textwrap.dedent("""
    import deepspeed.ops.op_builder.cpu as builders
    import torch.distributed as dist

    def refuse(self, *args, **kwargs):
        raise SystemExit(f"compiled {self.NAME}")

    builders.ShareMemCommBuilder.load = refuse  # any attempt to build it ends the process
    from tabula.runtime.deepspeed_engine import init_distributed

    init_distributed(timeout_minutes=1)
    tensor = __import__("torch").ones(3)
    dist.all_reduce(tensor)
    print("joined", dist.get_world_size(), tensor.tolist())
    dist.destroy_process_group()
""")


def test_the_cpu_process_group_starts_without_building_the_shared_memory_op(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": "", "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}
    import os

    done = subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "joined 1 [1.0, 1.0, 1.0]" in done.stdout
    assert not (tmp_path / "extensions").exists()  # nothing compiled
