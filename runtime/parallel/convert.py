"""An fsdp checkpoint to and from the local format, so that any checkpoint resumes on any backend.

    has_fsdp_state(checkpoint_dir) -> bool
    write_local_optimizer(checkpoint_dir)              fsdp/ -> optimizer.pt (the local engine's, and
                                                       through it DeepSpeed's universal route)
    prepare_fsdp_resume(checkpoint_dir, world, tensor) -> Move | None

Every checkpoint holds consolidated weights (model.safetensors). An fsdp checkpoint's optimizer state
lives in fsdp/state/ (torch.distributed.checkpoint, keyed by parameter name), which any world or
tensor size loads natively. The local engine reads torch's optimizer state numbered by parameter in
tabula's group order (optimizer.pt): written here from fsdp/state/ in the launching process, with the
group names of fsdp/layout.json. The other way, the fsdp engine reads a local checkpoint's
optimizer.pt itself (parallel/engine.py), and a DeepSpeed one after runtime/reshard.py made it local.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .engine import FSDP_DIR, LAYOUT_FILE, STATE_DIR


class FsdpConvertError(Exception):
    """An fsdp checkpoint whose state cannot be converted (the message says why)."""


def has_fsdp_state(checkpoint_dir: Path) -> bool:
    return (Path(checkpoint_dir) / FSDP_DIR / STATE_DIR).is_dir()


def read_fsdp_layout(checkpoint_dir: Path) -> dict:
    path = Path(checkpoint_dir) / FSDP_DIR / LAYOUT_FILE
    try:
        with open(path, encoding="utf-8") as handle:
            layout: dict = json.load(handle)
    except (OSError, ValueError) as error:
        raise FsdpConvertError(f"cannot read {path}: {error}") from None
    return layout


def write_local_optimizer(checkpoint_dir: Path) -> None:
    """Write optimizer.pt (the local engine's format) from an fsdp checkpoint's sharded state; nothing
    to do when it is there already."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from ..engine import OPTIMIZER_FILE

    checkpoint_dir = Path(checkpoint_dir)
    target = checkpoint_dir / OPTIMIZER_FILE
    if target.is_file():
        return
    layout = read_fsdp_layout(checkpoint_dir)
    if layout.get("precision") == "fp16":
        raise FsdpConvertError("an fp16 checkpoint's loss scale cannot move between engines")
    with tempfile.TemporaryDirectory(dir=checkpoint_dir, prefix=".convert-") as scratch:
        whole = Path(scratch) / "whole.pt"
        try:
            dcp_to_torch_save(str(checkpoint_dir / FSDP_DIR / STATE_DIR), str(whole))  # every shard joined
        except Exception as error:  # noqa: BLE001 - DCP raises many kinds for a damaged folder
            raise FsdpConvertError(f"cannot read {checkpoint_dir / FSDP_DIR / STATE_DIR}: {error}") from None
        optim = torch.load(whole, map_location="cpu", weights_only=False)["optim"]
    state, groups, index = {}, [], 0
    for names, saved in zip(layout["groups"], optim["param_groups"]):
        groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": list(range(index, index + len(names)))})
        for name in names:
            if name in optim["state"]:
                state[index] = optim["state"][name]
            index += 1
    tmp = target.with_name(f".tmp-{OPTIMIZER_FILE}")
    torch.save({"optimizer": {"state": state, "param_groups": groups}}, tmp)
    os.replace(tmp, target)


def prepare_fsdp_resume(checkpoint_dir: Path, world: int, tensor: int):
    """Make `checkpoint_dir` loadable by an fsdp run of `world` ranks: an fsdp checkpoint loads natively at
    any size (None); a DeepSpeed one gets the local engine's optimizer.pt (runtime/reshard.py), which the
    fsdp engine reads (its Move returned); a local one loads as it is (None)."""
    from ..reshard import DS_DIR, prepare_local_resume

    checkpoint_dir = Path(checkpoint_dir)
    if has_fsdp_state(checkpoint_dir):
        return None
    if (checkpoint_dir / DS_DIR).is_dir():
        if not torch.cuda.is_available():  # DeepSpeed, imported to read its files, warns it found no GPU
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        return prepare_local_resume(checkpoint_dir)
    return None
