"""The run directory: created for a new run, found again for a resume, and its manifest.

    runs/<name>-<yyyymmdd-hhmmss>/
      spec.yaml  resolved.yaml  manifest.json  events.jsonl  tokenizer.json  checkpoints/  control/

Its names and protocol (event kinds, control requests) are `tabula.schemas.rundir_protocol`.

manifest.json records what is needed to reproduce the run: spec hash, tabula version, the git commit
of the repository holding the spec, package versions, hardware, data fingerprint, tokenizer hash,
command line; and each resume (with the spec changes it applied).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabula.schemas.rundir_protocol import (
    CHECKPOINTS_DIR, CONTROL_DIR, EVENTS_FILE, MANIFEST_FILE, RESOLVED_FILE, SPEC_FILE, TOKENIZER_FILE,
)

from .checkpoint import CheckpointError, Selection, list_checkpoints, select_checkpoint, step_of
from .integrity import check_checkpoint

PACKAGES = ["torch", "numpy", "pydantic", "ruamel.yaml", "safetensors", "tokenizers", "datasets", "aim", "deepspeed", "textual"]


@dataclass(frozen=True)
class RunDir:
    """A run's folder and the names of what it holds."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def events(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    def read_manifest(self) -> dict[str, Any]:
        with open(self.manifest_path, encoding="utf-8") as handle:
            return json.load(handle)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace manifest.json atomically (a reader never sees half a file)."""
        tmp = self.path / f".{MANIFEST_FILE}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, self.manifest_path)

    def update_manifest(self, **fields: Any) -> None:
        manifest = self.read_manifest()
        manifest.update(fields)
        self.write_manifest(manifest)


def new_run_path(runs_dir: str | Path, name: str, now: float | None = None) -> Path:
    """`<runs_dir>/<name>-<yyyymmdd-hhmmss>`, with a `-2`, `-3` ... suffix if that second is taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = Path(runs_dir) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def create_run_dir(path: Path, spec, *, spec_text: str, resolved_yaml: str, manifest: dict[str, Any], tokenizer_json: str | None) -> RunDir:
    """Create the folder and write everything a run starts with. `path` must be absent or empty."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} already exists and is not empty; use --resume {path} to continue that run")
    path.mkdir(parents=True, exist_ok=True)
    (path / CHECKPOINTS_DIR).mkdir()
    (path / CONTROL_DIR).mkdir()
    (path / SPEC_FILE).write_text(spec_text, encoding="utf-8")
    (path / RESOLVED_FILE).write_text(resolved_yaml, encoding="utf-8")
    if tokenizer_json is not None:
        (path / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
    (path / EVENTS_FILE).touch()
    run = RunDir(path)
    run.write_manifest(manifest)
    return run


# ---------------------------------------------------------------- manifest


def git_info(folder: Path) -> dict[str, Any] | None:
    """Commit, dirty flag and root of the git repository holding `folder`, or None outside one."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        root = git("rev-parse", "--show-toplevel")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty, "root": root}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    """Platform, CPU, memory and GPUs of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"name": props.name, "memory": props.total_memory})
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory": memory,
        "gpus": gpus,
    }


def build_manifest(spec, *, spec_hash: str, prepared, command: list[str], overrides: list[str], run_name: str) -> dict[str, Any]:
    from tabula import __version__

    source = getattr(spec, "source_path", None)
    return {
        "run_name": run_name,
        "spec_name": spec.name,
        "created": time.time(),
        "spec_hash": spec_hash,
        "spec_path": str(Path(source).resolve()) if source else None,
        "overrides": list(overrides),
        "tabula_version": __version__,
        "git": git_info(Path(source).resolve().parent) if source else None,
        "packages": package_versions(),
        "hardware": hardware(),
        "data": {
            "fingerprint": prepared.fingerprint,
            "tokenizer_hash": prepared.tokenizer_hash,
            "vocab_size": prepared.vocab_size,
        },
        "command": command,
        "resumes": [],
    }


# ---------------------------------------------------------------- resume


def _manifest_of(path: Path) -> dict[str, Any] | None:
    try:
        with open(path / MANIFEST_FILE, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def run_has_checkpoint(path: Path) -> bool:
    return bool(list_checkpoints(path))


def find_resume(resume: str, spec) -> tuple[RunDir, Selection]:
    """(run folder, the checkpoint to resume and the damaged ones skipped) for `--resume DIR|auto`.

    DIR is a run folder (its newest intact checkpoint, runtime/checkpoint.select_checkpoint) or one
    checkpoint folder (which must be intact); `auto` is the newest intact checkpoint of the newest run of
    this spec's name under track.runs_dir. Raises FileNotFoundError or CheckpointError with a message for
    the user."""
    if resume == "auto":
        runs_dir = Path(spec.track.runs_dir)
        candidates = []
        for path in runs_dir.iterdir() if runs_dir.is_dir() else []:
            manifest = _manifest_of(path)
            if isinstance(manifest, dict) and manifest.get("spec_name") == spec.name and run_has_checkpoint(path):
                created = manifest.get("created", 0.0)
                candidates.append((created if isinstance(created, (int, float)) else 0.0, path.name, path))
        if not candidates:
            raise FileNotFoundError(f"--resume auto: no run of {spec.name!r} with a complete checkpoint under {runs_dir}/")
        newest = max(candidates)[2]
        selection = select_checkpoint(newest)
        selection.required(newest / CHECKPOINTS_DIR)
        return RunDir(newest), selection
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"--resume {resume}: no such folder")
    if path.parent.name == CHECKPOINTS_DIR and path.name.startswith("step-"):
        if path not in list_checkpoints(path.parent):
            raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint")
        reason = check_checkpoint(path)
        if reason is not None:
            intact = select_checkpoint(path.parent, up_to=step_of(path)).checkpoint
            instead = f"; the newest intact checkpoint before it is {intact}" if intact else ""
            raise CheckpointError(f"--resume {resume}: the checkpoint is damaged: {reason}{instead}")
        return RunDir(path.parent.parent), Selection(path)
    if not (path / MANIFEST_FILE).exists():
        raise FileNotFoundError(f"--resume {resume}: not a run folder (no {MANIFEST_FILE})")
    if not list_checkpoints(path):
        raise FileNotFoundError(f"--resume {resume}: the run has no complete checkpoint to resume from")
    selection = select_checkpoint(path)
    selection.required(path / CHECKPOINTS_DIR)
    return RunDir(path), selection
