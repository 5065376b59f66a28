"""Resume a DeepSpeed run on another world size or ZeRO stage, optimizer state included.

DeepSpeed's own route is the universal checkpoint: `python -m deepspeed.checkpoint.ds_to_universal`
turns a sharded ZeRO checkpoint into one folder per parameter (`zero/<name>/fp32.pt, exp_avg.pt,
exp_avg_sq.pt, step.pt`) that any world size can load with `checkpoint.load_universal`. What
deepspeed 0.19.8 does by itself, measured on 2 CPU ranks:

  - ZeRO-1/2 -> ZeRO-1/2, any world size: works.
  - ZeRO-3 -> ZeRO-3, any world size: works.
  - ZeRO-1/2 <-> ZeRO-3: fails. The two families write different universal folders: the model-states
    file is named `mp_rank_00_model_states.pt` (stage 1/2) or `zero_pp_rank_0_mp_rank_00_model_states.pt`
    (stage 3), and the loader globs for its own name only (hence the assertion in
    state_dict_factory.check_ckpt_list: an empty list); stage 3 writes bare tensors and no step.pt,
    stage 1/2 expects {"param": tensor} and step.pt; and `zero/optimizer_state.pt` has different keys.
  - ZeRO-0 (no ZeRO) has no universal form at all (ds_to_universal wants *_optim_states.pt files), and
    a ZeRO-0 engine ignores `load_universal`. Its own checkpoint holds the whole optimizer state, so
    ZeRO-0 -> ZeRO-0 loads natively at any world size.

This module closes the gaps by normalising the universal folder to hold both families' forms (both
model-states names, {"param": tensor} files with step.pt, one optimizer_state.pt with both key sets),
by writing the universal form of a ZeRO-0 checkpoint itself, and by loading a universal folder into a
ZeRO-0 engine directly. Every move between stages 0-3 and world sizes then keeps the optimizer state.
One exception remains: a ZeRO-0 checkpoint trained in bf16/fp16 keeps its fp32 master weights inside
DeepSpeed's mixed-precision optimizer; moving it elsewhere is refused with a message that names
`--resume-weights-only`-style weights resume (`weights_only_resume`), never done silently.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

DS_DIR = "deepspeed"
TAG = "state"
LAYOUT_FILE = "layout.json"
UNIVERSAL = "universal"
Z12_MODEL_STATES = "mp_rank_00_model_states.pt"
Z3_MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"


class ReshardError(Exception):
    """A resume that cannot keep the optimizer state (the message says what can be done instead)."""


@dataclass(frozen=True)
class Move:
    """From the layout a checkpoint was saved with to the layout a resume will run."""

    from_stage: int
    from_world: int
    to_stage: int
    to_world: int

    @property
    def changes(self) -> bool:
        if self.from_stage == 0 and self.to_stage == 0:
            return False  # a ZeRO-0 checkpoint holds everything whole: any world size loads it natively
        return (self.from_stage, self.from_world) != (self.to_stage, self.to_world)

    @property
    def text(self) -> str:
        def side(stage, world):
            return f"{world} rank{'s' if world != 1 else ''} ZeRO-{stage}"

        return f"{side(self.from_stage, self.from_world)} -> {side(self.to_stage, self.to_world)}"


def read_layout(checkpoint_dir: Path) -> dict:
    """The layout a DeepSpeed checkpoint was saved with (stage, world size, precision, groups)."""
    path = Path(checkpoint_dir) / DS_DIR / LAYOUT_FILE
    if not path.is_file():
        raise ReshardError(f"{checkpoint_dir} is not a DeepSpeed checkpoint (no {DS_DIR}/{LAYOUT_FILE}); "
                           f"a local run's checkpoint resumes under DeepSpeed through its weights only")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def describe_move(layout: dict, to_stage: int, to_world: int) -> Move:
    return Move(int(layout["zero_stage"]), int(layout["world_size"]), int(to_stage), int(to_world))


def universal_folder(checkpoint_dir: Path, to_stage: int | None = None) -> Path:
    """Where the normalised universal checkpoint of `checkpoint_dir` lives (one folder serves every target)."""
    return Path(checkpoint_dir) / DS_DIR / UNIVERSAL


def prepare_resume(checkpoint_dir: Path, to_stage: int, to_world: int) -> Move:
    """Before the ranks start: make `checkpoint_dir` loadable at ZeRO `to_stage` on `to_world` ranks with
    its optimizer state. Writes the universal folder beside DeepSpeed's own (atomically: a crash leaves
    none) when the move needs it. Returns the move; raises ReshardError when it cannot keep the state."""
    checkpoint_dir = Path(checkpoint_dir)
    layout = read_layout(checkpoint_dir)
    move = describe_move(layout, to_stage, to_world)
    target = universal_folder(checkpoint_dir)
    if not move.changes or target.is_dir():
        return move
    if move.from_stage == 0 and layout.get("precision", "fp32") != "fp32":
        raise ReshardError(
            f"{move.text}: a ZeRO-0 {layout['precision']} checkpoint keeps its fp32 master weights and optimizer "
            f"state inside DeepSpeed's mixed-precision optimizer, which has no universal form. Resume at ZeRO-0 "
            f"(any world size), or resume from the weights only with a fresh optimizer state")
    tmp = target.with_name(f".tmp-{UNIVERSAL}")
    shutil.rmtree(tmp, ignore_errors=True)
    source = checkpoint_dir / DS_DIR / TAG
    if move.from_stage == 0:
        _universal_from_plain(source, layout, tmp)
    else:
        _run_ds_to_universal(source, tmp)
    _normalise(tmp)
    tmp.rename(target)
    return move


def _run_ds_to_universal(source: Path, output: Path) -> None:
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(source),
               "--output_folder", str(output)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ReshardError(f"ds_to_universal could not convert {source}:\n  " + "\n  ".join(tail))
    # ds_to_universal points a `latest_universal` file beside the output at its temporary name
    (output.parent / "latest_universal").unlink(missing_ok=True)


def _wrapped(value) -> dict:
    return value if isinstance(value, dict) else {"param": value, "cat_dim": 0}


def _normalise(folder: Path) -> None:
    """Give a universal folder both ZeRO families' forms (see the module docstring)."""
    import deepspeed

    zero = folder / "zero"
    optim = torch.load(zero / "optimizer_state.pt", weights_only=False)
    step = _step_of(optim, zero)
    for param_dir in (p for p in zero.iterdir() if p.is_dir()):
        for file in param_dir.glob("*.pt"):
            if file.name == "step.pt":
                continue
            value = torch.load(file, weights_only=False)
            if not isinstance(value, dict):
                torch.save(_wrapped(value), file)
        if not (param_dir / "step.pt").exists():
            torch.save(torch.tensor(float(step)), param_dir / "step.pt")
    groups = optim.get("param_groups") or optim["optimizer_state_dict"]["param_groups"]
    optim.setdefault("param_groups", groups)
    optim.setdefault("ds_version", deepspeed.__version__)
    optim.setdefault("optimizer_state_dict", {"state": {0: {"step": torch.tensor(float(step))}}, "param_groups": groups})
    torch.save(optim, zero / "optimizer_state.pt")
    z12, z3 = folder / Z12_MODEL_STATES, folder / Z3_MODEL_STATES
    if not z12.exists():
        shutil.copy2(z3, z12)
    if not z3.exists():
        shutil.copy2(z12, z3)
    for extra in folder.glob("zero_pp_rank_*_mp_rank_00_model_states.pt"):
        if extra.name != Z3_MODEL_STATES:  # only rank 0's is read when loading a universal checkpoint
            extra.unlink()


def _step_of(optim: dict, zero: Path) -> float:
    if "optimizer_state_dict" in optim:
        state = optim["optimizer_state_dict"]["state"]
        if state:
            return float(next(iter(state.values()))["step"])
    for step_file in zero.glob("*/step.pt"):
        return float(torch.load(step_file, weights_only=False))
    return 0.0


def _universal_from_plain(source: Path, layout: dict, output: Path) -> None:
    """The universal form of a ZeRO-0 fp32 checkpoint: its module and torch optimizer state per parameter."""
    import deepspeed

    states = torch.load(source / Z12_MODEL_STATES, map_location="cpu", weights_only=False)
    module, optimizer = states["module"], states["optimizer"]
    names = [name for group in layout["groups"] for name in group]
    zero = output / "zero"
    step = 0.0
    for index, name in enumerate(names):
        folder = zero / name
        folder.mkdir(parents=True)
        torch.save(_wrapped(module[name].float()), folder / "fp32.pt")
        for key, value in optimizer["state"].get(index, {}).items():
            if key == "step":
                step = float(value)
                continue
            torch.save(_wrapped(value.float()), folder / f"{key}.pt")
    for index, name in enumerate(names):
        torch.save(torch.tensor(step), zero / name / "step.pt")
    groups = [{k: v for k, v in g.items()} for g in optimizer["param_groups"]]
    torch.save({"param_groups": groups, "ds_version": deepspeed.__version__, "clip_grad": 0.0}, zero / "optimizer_state.pt")
    states["optimizer"] = None  # the universal files hold it now
    torch.save(states, output / Z12_MODEL_STATES)


def load_universal_plain(engine, folder: Path) -> None:
    """Load a universal folder into a ZeRO-0 (plain DeepSpeed, fp32) engine: weights into the module,
    per-parameter optimizer state (exp_avg, exp_avg_sq, momentum ...) and step into the torch optimizer."""
    if engine.precision != "fp32":
        raise ReshardError(f"resuming into ZeRO-0 with {engine.precision} from another layout is not supported: "
                           f"use ZeRO-1 or higher, or fp32")
    zero = Path(folder) / "zero"
    optimizer = engine.ds.optimizer
    params = dict(engine.model.named_parameters())
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(_load_tensor(zero / name / "fp32.pt").view_as(param))
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = engine.names[id(param)]
            state = {}
            for file in (zero / name).glob("*.pt"):
                key = file.stem
                if key == "fp32":
                    continue
                if key == "step":
                    state["step"] = torch.tensor(float(torch.load(file, weights_only=False)))
                else:
                    state[key] = _load_tensor(file).view_as(param).to(param.device).clone()
            optimizer.state[param] = state


def _load_tensor(file: Path) -> torch.Tensor:
    value = torch.load(file, weights_only=False)
    return value["param"] if isinstance(value, dict) else value


def weights_only_resume(checkpoint_dir: Path) -> Path:
    """The consolidated weights of a checkpoint, for a resume that starts the optimizer state afresh
    (the caller says so in the run's events). Returns the safetensors file."""
    from .engine import WEIGHTS_FILE

    path = Path(checkpoint_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise ReshardError(f"{checkpoint_dir} has no {WEIGHTS_FILE}")
    return path
