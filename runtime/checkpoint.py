"""Checkpoints: written whole or not at all, pruned by `keep_last` and `keep_best_by`, and loaded back.

A checkpoint is a folder `checkpoints/step-000500/`:
  model.safetensors   consolidated weights (tied weights stored once; the aliases in its metadata)
  optimizer.pt ...    whatever the engine's `save` writes besides
  rng-rank0.json      python / numpy / torch (and CUDA) generator states of each rank
  state.json          the loop's progress: step, tokens, sampler state, best val loss ... (written last)
It is written as `.tmp-step-000500`, every file fsynced, then renamed: a crash at any instant leaves
either the complete new folder or none, and the previous checkpoint untouched. Every `step-*` folder is
complete by construction.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tabula.schemas.rundir_protocol import CHECKPOINT_PREFIX as PREFIX
from tabula.schemas.rundir_protocol import CHECKPOINTS_DIR, RESOLVED_FILE, WEIGHTS_FILE

from .data.cache import fsync_path

STATE_FILE = "state.json"


class CheckpointError(Exception):
    """A checkpoint could not be written (the message says why and what survived)."""


# ---------------------------------------------------------------- weights


def save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write weights as safetensors; tensors sharing storage (tied embeddings) are stored once and the
    other names recorded as aliases in the metadata."""
    seen: dict[tuple, str] = {}
    tensors, aliases = {}, {}
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().contiguous().cpu()
    save_file(tensors, str(path), metadata={"aliases": json.dumps(aliases)})


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The full state dict from a file written by `save_weights` (aliases point at the same tensor)."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]
    return tensors


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy the weights in `path` into `model` (in place, strict: every name must match)."""
    model.load_state_dict(read_weights(path), strict=True)


# ---------------------------------------------------------------- random generators


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _from_b64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng() -> dict[str, Any]:
    """Every generator's state, JSON-able."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_from_b64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_from_b64(s) for s in state["cuda"]])


# ---------------------------------------------------------------- files


def fsync_tree(folder: Path) -> None:
    """Flush every file below `folder`, then the folder itself, to the disk (before renaming it into place)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fsync_path(path)
    fsync_path(folder)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def list_checkpoints(run_or_checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints of a run (its folder or its checkpoints/ folder), oldest first."""
    folder = Path(run_or_checkpoints_dir)
    if (folder / CHECKPOINTS_DIR).is_dir():
        folder = folder / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted((p for p in found if (p / STATE_FILE).exists()), key=step_of)


def read_state(checkpoint: Path) -> dict[str, Any]:
    with open(Path(checkpoint) / STATE_FILE, encoding="utf-8") as handle:
        return json.load(handle)


class Checkpointer:
    """Writes and prunes one run's checkpoints. Every rank constructs one and calls `save` together;
    rank 0 alone touches the folder structure."""

    def __init__(self, run_dir: Path, engine, *, keep_last: int, keep_best: bool) -> None:
        self.folder = Path(run_dir) / CHECKPOINTS_DIR
        self.engine = engine
        self.keep_last = keep_last
        self.keep_best = keep_best
        if engine.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            for leftover in self.folder.glob(".tmp-*"):  # a crash mid-write: never complete, never used
                shutil.rmtree(leftover, ignore_errors=True)
            for leftover in self.folder.glob(".trash-*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write checkpoint `step` with the loop's `state` (JSON-able). Returns its folder.
        Raises CheckpointError (the previous checkpoints intact) when the disk refuses it."""
        engine = self.engine
        final = self.folder / f"{PREFIX}{step:06d}"
        tmp = self.folder / f".tmp-{final.name}"
        try:
            if engine.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            engine.barrier()
            engine.save(tmp)
            _write_json(tmp / f"rng-rank{engine.rank}.json", capture_rng())
            engine.barrier()
            if engine.is_main:
                _write_json(tmp / STATE_FILE, state)
                fsync_tree(tmp)
                if final.exists():  # the same step again (after a rollback): replace it
                    trash = self.folder / f".trash-{final.name}"
                    final.rename(trash)
                    shutil.rmtree(trash, ignore_errors=True)
                tmp.rename(final)
                fsync_path(self.folder)
            engine.barrier()
        except OSError as error:
            if engine.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            previous = [p.name for p in list_checkpoints(self.folder)]
            kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
            reason = "the disk is full" if error.errno == errno.ENOSPC else str(error)
            raise CheckpointError(f"checkpoint at step {step} was not written ({reason}); {kept}") from error
        if engine.is_main:
            self.prune()
        return final

    def best(self) -> Path | None:
        """The complete checkpoint with the lowest recorded val_loss, or None."""
        scored = [(read_state(p).get("val_loss"), step_of(p), p) for p in list_checkpoints(self.folder)]
        scored = [s for s in scored if s[0] is not None]
        return min(scored)[2] if scored else None

    def prune(self) -> list[Path]:
        """Delete checkpoints beyond the newest `keep_last` (and the best one). Returns those deleted."""
        checkpoints = list_checkpoints(self.folder)
        keep = set(checkpoints[-self.keep_last:])
        best = self.best() if self.keep_best else None
        if best is not None:
            keep.add(best)
        deleted = []
        for path in checkpoints:
            if path not in keep:
                trash = self.folder / f".trash-{path.name}"
                path.rename(trash)  # gone from the list at once; the slow delete follows
                shutil.rmtree(trash, ignore_errors=True)
                deleted.append(path)
        return deleted


def restore_checkpoint(engine, checkpoint: Path) -> dict[str, Any]:
    """Load the engine's state and this rank's generators from `checkpoint`; returns the loop state."""
    checkpoint = Path(checkpoint)
    engine.load(checkpoint)
    rng = checkpoint / f"rng-rank{engine.rank}.json"
    if not rng.exists():  # resuming on more ranks than saved: derive from rank 0's, never silently reuse
        rng = checkpoint / "rng-rank0.json"
    with open(rng, encoding="utf-8") as handle:
        restore_rng(json.load(handle))
    return read_state(checkpoint)


# ---------------------------------------------------------------- the public tabula.load_model


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder from a run folder (its newest complete checkpoint) or a checkpoint folder."""
    path = Path(path)
    if (path / WEIGHTS_FILE).is_file():
        return path
    checkpoints = list_checkpoints(path)
    if not checkpoints:
        raise FileNotFoundError(f"{path} holds no complete checkpoint (expected {CHECKPOINTS_DIR}/{PREFIX}NNNNNN/{WEIGHTS_FILE})")
    return checkpoints[-1]


def load_model(run_dir_or_checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained model of a run folder (its newest checkpoint) or of one checkpoint folder, on `device`,
    in eval mode. The architecture comes from the run's resolved.yaml."""
    from tabula.compiler import build_model
    from tabula.schemas.loader import load_spec

    checkpoint = find_checkpoint(Path(run_dir_or_checkpoint))
    run_dir = checkpoint.parent.parent
    spec = load_spec(run_dir / RESOLVED_FILE)
    state = read_state(checkpoint)
    model = build_model(spec, vocab_size=state.get("vocab_size"))
    model.materialize(device, spec.seed)
    load_weights(model, checkpoint / WEIGHTS_FILE)
    return model.eval()
