"""Resume a run on another world size or ZeRO stage, or move it between a local run and DeepSpeed,
optimizer state included.

DeepSpeed's own route is the universal checkpoint: `python -m deepspeed.checkpoint.ds_to_universal`
turns a sharded ZeRO checkpoint into one folder per parameter (`zero/<name>/fp32.pt, exp_avg.pt,
exp_avg_sq.pt, step.pt`) that any world size can load with `checkpoint.load_universal`. What
deepspeed 0.19.8 does by itself, measured on 2 CPU ranks:

  - ZeRO-1/2 -> ZeRO-1/2, any world size: works, losses continue exactly.
  - ZeRO-3 -> ZeRO-3, another world size: loads, but the losses drift (1e-3 in 3 steps): the loader
    leaves small "persistent" parameters at their initial values and gives every parameter group
    one shared `step` tensor (runtime/deepspeed_engine.py repairs both after loading).
  - ZeRO-1/2 <-> ZeRO-3: fails. The two families write different universal folders: the model-states
    file is `mp_rank_00_model_states.pt` (stage 1/2) or `zero_pp_rank_0_mp_rank_00_model_states.pt`
    (stage 3) and the loader globs for its own name only (hence the assertion in
    state_dict_factory.check_ckpt_list: an empty list); stage 3 writes bare tensors and no step.pt
    where stage 1/2 expects {"param": tensor} and step.pt; `zero/optimizer_state.pt` has other keys.
  - ZeRO-0 (no ZeRO) has no universal form (ds_to_universal wants *_optim_states.pt files) and a
    ZeRO-0 engine ignores `load_universal`. Its checkpoint holds the whole optimizer state, so
    ZeRO-0 -> ZeRO-0 loads natively at any world size.

This module closes the gaps: it normalises the universal folder to hold both families' forms (both
model-states names, {"param": tensor} files with step.pt, one optimizer_state.pt with both key sets),
writes the universal form of a ZeRO-0 or a local checkpoint itself, loads a universal folder into a
ZeRO-0 engine directly, and writes the local engine's optimizer.pt from a DeepSpeed checkpoint. Every
move between local, ZeRO 0-3 and any world size then keeps the optimizer state. Refused, with a
message, never silently degraded: a ZeRO-0 bf16/fp16 checkpoint to another layout (its fp32 master
weights live inside DeepSpeed's mixed-precision optimizer) and fp16 loss-scaler state across engines;
those can start a new run from the checkpoint's weights (`weights_only_resume` names the file).
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
    """From the layout a checkpoint was saved with to the layout a resume will run (stage None: a
    local run, one process without DeepSpeed)."""

    from_stage: int | None
    from_world: int
    to_stage: int | None
    to_world: int

    @property
    def changes(self) -> bool:
        if self.from_stage == 0 and self.to_stage == 0:
            return False  # a ZeRO-0 checkpoint holds everything whole: any world size loads it natively
        return (self.from_stage, self.from_world) != (self.to_stage, self.to_world)

    @property
    def text(self) -> str:
        def side(stage, world):
            if stage is None:
                return "a local run"
            return f"{world} rank{'s' if world != 1 else ''} ZeRO-{stage}"

        return f"{side(self.from_stage, self.from_world)} -> {side(self.to_stage, self.to_world)}"


LOCAL = {"zero_stage": None, "world_size": 1}  # the layout of a local run's checkpoint


def read_layout(checkpoint_dir: Path) -> dict:
    """The layout a checkpoint was saved with: a DeepSpeed one's stage, world size, precision and
    parameter names by optimizer group, or LOCAL for a local run's (model.safetensors + optimizer.pt)."""
    from .engine import OPTIMIZER_FILE

    path = Path(checkpoint_dir) / DS_DIR / LAYOUT_FILE
    if path.is_file():
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError) as error:
            raise ReshardError(f"cannot read {path}: {error}") from None
    if (Path(checkpoint_dir) / OPTIMIZER_FILE).is_file():
        return dict(LOCAL)
    raise ReshardError(f"{checkpoint_dir} is neither a DeepSpeed checkpoint (no {DS_DIR}/{LAYOUT_FILE}) "
                       f"nor a local one (no {OPTIMIZER_FILE})")


def describe_move(layout: dict, to_stage: int | None, to_world: int) -> Move:
    stage = layout["zero_stage"]
    return Move(None if stage is None else int(stage), int(layout["world_size"]),
                None if to_stage is None else int(to_stage), int(to_world))


def group_names(spec, vocab_size: int) -> list[list[str]]:
    """Parameter names by optimizer group, in tabula's order (runtime/optimizers.param_groups), from the
    spec alone (the model is built on the meta device): what a local checkpoint's optimizer.pt numbers."""
    from tabula.compiler import build_model

    from .optimizers import param_groups

    model = build_model(spec, vocab_size=vocab_size)
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in param_groups(model, spec.train.optimizer.weight_decay)]


def universal_folder(checkpoint_dir: Path) -> Path:
    """Where the normalised universal checkpoint of `checkpoint_dir` lives (one folder serves every target)."""
    return Path(checkpoint_dir) / DS_DIR / UNIVERSAL


def prepare_resume(checkpoint_dir: Path, to_stage: int, to_world: int, *, spec=None, pipeline_stages: int = 1) -> Move:
    """Before the ranks start: make `checkpoint_dir` loadable at ZeRO `to_stage` on `to_world` ranks with
    its optimizer state. Writes the universal folder beside DeepSpeed's own (atomically: a crash leaves
    none) when the move needs it. `spec` (the resumed spec) is needed for a local run's checkpoint, whose
    optimizer state is numbered by parameter. Returns the move; raises ReshardError when it cannot keep
    the state."""
    checkpoint_dir = Path(checkpoint_dir)
    layout = read_layout(checkpoint_dir)
    saved_stages = int(layout.get("pipeline_stages", 1))
    if saved_stages > 1 or pipeline_stages > 1:
        # a pipeline resumes on the same pipeline only (or, through prepare_local_resume, on the local engine)
        data_world = to_world // pipeline_stages
        saved = (saved_stages, layout["zero_stage"], int(layout["world_size"]))
        if saved != (pipeline_stages, to_stage, data_world):
            what = ("a local run" if layout["zero_stage"] is None else
                    f"{saved_stages} pipeline stage(s) at ZeRO {saved[1]} on {saved[2]} data-parallel rank(s)")
            raise ReshardError(f"the checkpoint was saved by {what}; this run has {pipeline_stages} pipeline stage(s) at "
                               f"ZeRO {to_stage} on {data_world}: a pipeline checkpoint resumes on the same pipeline or "
                               f"on the local engine (parallel.backend: local)")
        return Move(to_stage, data_world, to_stage, data_world)
    if layout["zero_stage"] is None:
        if spec is None:
            raise ReshardError(f"{checkpoint_dir} is a local run's checkpoint: its spec is needed to move it")
        from .checkpoint import read_state

        layout["groups"] = group_names(spec, read_state(checkpoint_dir)["vocab_size"])
    move = describe_move(layout, to_stage, to_world)
    if move.changes:
        _ensure_universal(checkpoint_dir, layout, move)
    return move


def _ensure_universal(checkpoint_dir: Path, layout: dict, move: Move) -> None:
    """Write the normalised universal folder of `checkpoint_dir` unless it is there already."""
    target = universal_folder(checkpoint_dir)
    if target.is_dir():
        return
    from .checkpoint import WEIGHTS_FILE, finetune_record

    weights = checkpoint_dir / WEIGHTS_FILE
    if weights.is_file() and finetune_record(weights) is not None:
        raise ReshardError(f"{move.text}: a fine-tuning checkpoint (its trained parameters alone, over a frozen base) resumes on "
                           f"the layout it was saved with; resume it there, or start a new run from tabula.load_model's weights")
    if move.from_stage == 0 and layout.get("precision", "fp32") != "fp32":
        raise ReshardError(
            f"{move.text}: a ZeRO-0 {layout['precision']} checkpoint keeps its fp32 master weights and optimizer "
            f"state inside DeepSpeed's mixed-precision optimizer, which has no universal form. Resume at ZeRO-0 "
            f"(any world size), or start a new run from its weights (tabula.load_model reads them)")
    tmp = target.with_name(f".tmp-{UNIVERSAL}")
    shutil.rmtree(tmp, ignore_errors=True)
    source = checkpoint_dir / DS_DIR / TAG
    if layout.get("pipeline_stages", 1) > 1:
        _universal_from_pipeline(source, layout, tmp, weights)
    elif move.from_stage is None:
        _universal_from_local(checkpoint_dir, layout, tmp)
    elif move.from_stage == 0:
        _universal_from_plain(source, layout, tmp)
    else:
        _run_ds_to_universal(source, tmp)
    _normalise(tmp)
    from .checkpoint import fsync_tree
    from .data.cache import fsync_path

    fsync_tree(tmp)
    tmp.rename(target)
    fsync_path(target.parent)


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
    states.setdefault("ds_version", deepspeed.__version__)
    torch.save(states, output / Z12_MODEL_STATES)


def _universal_from_pipeline(source: Path, layout: dict, output: Path, weights: Path) -> None:
    """The universal form of a pipeline checkpoint (ZeRO-0, fp32): each stage's `mp_rank_NN_model_states.pt`
    holds its torch optimizer state, numbered in the stage's groups (layout "stage_groups", plain names);
    the weights come from the consolidated file. A tied weight's state is the first stage's (the stages
    hold equal copies)."""
    import deepspeed

    from .checkpoint import read_weights

    if layout["zero_stage"] != 0 or layout.get("precision", "fp32") != "fp32" or layout["world_size"] != 1:
        raise ReshardError("only a pipeline checkpoint at ZeRO-0 in fp32 on one data-parallel rank converts to another "
                           f"layout (this one: ZeRO {layout['zero_stage']}, {layout.get('precision')}, "
                           f"{layout['world_size']} data-parallel ranks); resume it on the same pipeline")
    module = read_weights(weights)
    zero = output / "zero"
    step, by_name = 0.0, {}  # type: float, dict[str | None, dict]
    for stage, stage_groups in enumerate(layout["stage_groups"]):
        states = torch.load(source / f"mp_rank_{stage:02d}_model_states.pt", map_location="cpu", weights_only=False)
        optimizer = states["optimizer"]
        if stage == 0:
            torch.save({**states, "optimizer": None}, output.parent / ".tmp-states.pt")
        for g in optimizer["param_groups"]:
            by_name.setdefault(g.get("name"), {k: v for k, v in g.items() if k != "params"})
        names = [name for group in stage_groups for name in group]
        for index, name in enumerate(names):
            folder = zero / name
            if folder.is_dir():
                continue  # the tied weight, written by the first stage
            folder.mkdir(parents=True)
            torch.save(_wrapped(module[name].float()), folder / "fp32.pt")
            for key, value in optimizer["state"].get(index, {}).items():
                if key == "step":
                    step = float(value)
                    continue
                torch.save(_wrapped(value.float()), folder / f"{key}.pt")
    for folder in zero.iterdir():
        torch.save(torch.tensor(step), folder / "step.pt")
    (output.parent / ".tmp-states.pt").rename(output / Z12_MODEL_STATES)
    ordered = [by_name[kind] for kind in layout["group_kinds"]]
    torch.save({"param_groups": ordered, "ds_version": deepspeed.__version__, "clip_grad": 0.0}, zero / "optimizer_state.pt")


def _universal_from_local(checkpoint_dir: Path, layout: dict, output: Path) -> None:
    """The universal form of a local run's checkpoint (consolidated weights + torch optimizer state)."""
    from .checkpoint import read_state, read_weights
    from .engine import OPTIMIZER_FILE, WEIGHTS_FILE

    saved = torch.load(checkpoint_dir / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    if "scaler" in saved:
        raise ReshardError("a local fp16 checkpoint (with a loss scaler) cannot move to DeepSpeed with its "
                           "optimizer state; resume it locally, or start a new run from its weights")
    step = read_state(checkpoint_dir)["step"]
    states = {"module": read_weights(checkpoint_dir / WEIGHTS_FILE), "optimizer": saved["optimizer"],
              "dp_world_size": 1, "mp_world_size": 1, "global_steps": step, "skipped_steps": 0}
    output.mkdir(parents=True)
    tmp = output / "local"
    tmp.mkdir()
    torch.save(states, tmp / Z12_MODEL_STATES)
    _universal_from_plain(tmp, layout, output)
    shutil.rmtree(tmp)


def prepare_local_resume(checkpoint_dir: Path) -> Move:
    """Make a DeepSpeed checkpoint resumable by the local engine (one process): write the `optimizer.pt`
    it reads (torch's optimizer state, numbered by parameter in tabula's group order) beside the
    consolidated weights every DeepSpeed checkpoint already has. Nothing to do for a local checkpoint.
    Returns the move (to a local run); raises ReshardError when the state cannot be kept."""
    from .engine import OPTIMIZER_FILE

    checkpoint_dir = Path(checkpoint_dir)
    target = checkpoint_dir / OPTIMIZER_FILE
    layout = read_layout(checkpoint_dir)
    move = describe_move(layout, None, 1)
    if layout["zero_stage"] is None or target.is_file():
        return move
    if layout.get("precision", "fp32") == "fp16":
        raise ReshardError("a DeepSpeed fp16 checkpoint keeps a loss scale the local engine does not read; "
                           "resume it under DeepSpeed")
    from .checkpoint import read_weights
    from .data.cache import fsync_path
    from .engine import WEIGHTS_FILE

    _ensure_universal(checkpoint_dir, layout, move)  # every parameter's state, whole (even from 1 rank)
    zero = universal_folder(checkpoint_dir) / "zero"
    # ZeRO-3's universal files hold flat tensors: the shapes come from the consolidated weights
    shapes = {name: tensor.shape for name, tensor in read_weights(checkpoint_dir / WEIGHTS_FILE).items()}
    optim = torch.load(zero / "optimizer_state.pt", weights_only=False)
    state, groups, index = {}, [], 0
    for names, saved_group in zip(layout["groups"], optim["param_groups"]):
        group = {k: v for k, v in saved_group.items() if k != "params"}
        group["params"] = list(range(index, index + len(names)))
        groups.append(group)
        for name in names:
            shape = shapes[name]
            entry = {}
            for file in (zero / name).glob("*.pt"):
                if file.stem == "step":
                    entry["step"] = torch.tensor(float(torch.load(file, weights_only=False)))
                elif file.stem != "fp32":
                    entry[file.stem] = _load_tensor(file).reshape(shape).clone()
            state[index] = entry
            index += 1
    tmp = target.with_name(f".tmp-{OPTIMIZER_FILE}")
    torch.save({"optimizer": {"state": state, "param_groups": groups}}, tmp)
    fsync_path(tmp)
    tmp.rename(target)
    fsync_path(checkpoint_dir)
    return move


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
