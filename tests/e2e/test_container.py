"""The CPU image builds from the repository and serves: `docker build -f docker/Dockerfile.cpu`, then the image's
default command (`tabula serve /model`) over a small Hugging Face export mounted at /model, answering /health.
Skipped where no container engine (docker, podman) runs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _engine() -> str | None:
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if path and subprocess.run([path, "info"], capture_output=True, timeout=30).returncode == 0:
            return path
    return None


ENGINE = _engine()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(ENGINE is None, reason="no container engine here (docker or podman, running)")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(3600)
def test_the_cpu_image_serves_a_mounted_export_and_answers_health(tmp_path):
    from tabula.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text(f"extends: {ROOT / 'specs' / 'quickstart.yaml'}\ndata: {{tokenizer: {{vocab_size: 512}}}}\nmodel: {{vocab_size: 512, d_model: 32, n_layers: 1}}\n")
    assert main(["export", str(spec), "--format", "hf", "--out", str(tmp_path / "model")]) == 0
    tag = "tabula-test:cpu"
    subprocess.run([ENGINE, "build", "-f", "docker/Dockerfile.cpu", "-t", tag, "."], cwd=ROOT, check=True, timeout=3000)
    port = _free_port()
    container = subprocess.run([ENGINE, "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8000", "-v", f"{tmp_path / 'model'}:/model:ro", tag],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        deadline, health = time.monotonic() + 180, None
        while time.monotonic() < deadline and health is None:
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())
            except OSError:
                time.sleep(1)
        logs = subprocess.run([ENGINE, "logs", container], capture_output=True, text=True).stdout
        assert health is not None and health["status"] == "ok", logs
    finally:
        subprocess.run([ENGINE, "rm", "-f", container], capture_output=True)
