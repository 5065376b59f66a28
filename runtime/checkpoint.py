"""Checkpoints: written whole or not at all, checked, pruned by `keep_last` and `keep_best_by`, and loaded back.

A checkpoint is a folder `checkpoints/step-000500/`:
  model.safetensors   consolidated weights (tied weights stored once; the aliases in its metadata); under a
                      fine-tuning method that froze part of the model, the trained parameters alone, with
                      the method and the frozen base's fingerprint in its metadata (the base comes from the
                      spec: its seed, its weights' source), so no checkpoint repeats the base
  optimizer.pt ...    whatever the engine's `save` writes besides (DeepSpeed: deepspeed/ with every rank's shards)
  rng-rank0.json      python / numpy / torch (and CUDA) generator states of each rank
  stream-rank0.json   where each rank's stream loaders are (streamed sources, cache: false), where any stream
  state.json          the loop's progress: step, tokens, sampler state, best val loss ...
  checksums.json      size and SHA-256 of every file above (written last; runtime/integrity.py)
It is written as `.tmp-step-000500`, every file fsynced, then renamed: a crash at any instant leaves
either the complete new folder or none, and the previous checkpoint untouched. A write the disk refuses
(full, quota, I/O error: whatever the writing library raises) removes the temporary folder and raises
CheckpointWriteError. A `step-*` folder damaged later (truncated, bytes flipped, a file deleted) is
found by `select_checkpoint`, which picks the newest intact one and says which it skipped and why.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from tabula.schemas.rundir_protocol import CHECKPOINT_PREFIX as PREFIX
from tabula.schemas.rundir_protocol import CHECKPOINTS_DIR, WEIGHTS_FILE

from .data.cache import fsync_path
from .integrity import STATE_FILE, check_checkpoint, write_checksums
from .trained_weights import check_finetune, finetune_record, saved_names, weights_metadata

# what a refused write raises: the OS's error, torch.save's ("unexpected pos 201728 vs 201616", "file write
# failed"), safetensors' own
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
TORCH_PREFIX = re.compile(r"^\[enforce fail at [^]]*\][ .]*")  # "[enforce fail at inline_container.cc:672] . "
FULL_BELOW = 64 * 2**20  # free bytes under which a failed write is taken for a full disk whatever its text said

log = logging.getLogger(__name__)


class CheckpointError(Exception):
    """A checkpoint cannot be used (damaged, none intact) or written (CheckpointWriteError). The message says
    why and what survived."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint the disk refused. `path`: the folder that was not written; `reason`: in words;
    `disk_full`: the disk (or quota) is full; `recoverable`: the ranks agree and may train on (False when a
    rank failed inside the engine's collective save: the run must stop)."""

    def __init__(self, path: Path, reason: str, *, disk_full: bool, kept: Path | None, recoverable: bool = True) -> None:
        self.path, self.reason, self.disk_full, self.kept, self.recoverable = Path(path), reason, disk_full, kept, recoverable
        step = step_of(self.path)
        survived = f"the previous checkpoint {kept.name} is intact" if kept else "no earlier checkpoint exists"
        advice = "; free space on that disk or lower train.checkpoint.keep_last" if disk_full else ""
        super().__init__(f"checkpoint at step {step} was not written ({reason}); {survived}{advice}")


# ---------------------------------------------------------------- weights


def save_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write weights as safetensors; tensors sharing storage (tied embeddings) are stored once and the
    other names recorded as aliases in the metadata. `metadata`: more string entries (`weights_metadata`)."""
    seen: dict[tuple, str] = {}
    tensors, aliases = {}, {}
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().contiguous().cpu()
    save_file(tensors, str(path), metadata={**(metadata or {}), "aliases": json.dumps(aliases)})


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The full state dict from a file written by `save_weights` (aliases point at the same tensor)."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]
    return tensors


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy the weights in `path` into `model` (in place). Every name must match; a fine-tuning checkpoint's
    (`finetune_record`) must be the model's trainable parameters, over the same base (CheckpointError)."""
    state = read_weights(path)
    names = saved_names(model)
    if names is None and finetune_record(path) is None:
        model.load_state_dict(state, strict=True)
        return
    check_finetune(model, path)
    missing, unexpected = sorted(set(names or ()) - state.keys()), sorted(state.keys() - set(names or ()))
    if missing or unexpected:
        raise CheckpointError(f"{path}: the trained parameters differ from the model's: "
                              + "; ".join(f"{what} {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}"
                                          for what, found in (("missing", missing), ("unexpected", unexpected)) if found))
    model.load_state_dict(state, strict=False)


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
    """Flush every file and folder below `folder`, then the folder itself, to the disk (before renaming it
    into place)."""
    for path in sorted(folder.rglob("*")):
        if (path.is_file() or path.is_dir()) and not path.is_symlink():
            fsync_path(path)
    fsync_path(folder)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def _checkpoints_folder(run_or_checkpoints_dir: Path) -> Path:
    folder = Path(run_or_checkpoints_dir)
    return folder / CHECKPOINTS_DIR if (folder / CHECKPOINTS_DIR).is_dir() else folder


def _step_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=step_of)


def list_checkpoints(run_or_checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints of a run (its folder or its checkpoints/ folder), oldest first. Complete: renamed
    into place whole; not checked for later damage (`select_checkpoint` does that)."""
    return [p for p in _step_folders(_checkpoints_folder(run_or_checkpoints_dir)) if (p / STATE_FILE).exists()]


def read_state(checkpoint: Path) -> dict[str, Any]:
    with open(Path(checkpoint) / STATE_FILE, encoding="utf-8") as handle:
        return json.load(handle)


def remove_leftovers(run_or_checkpoints_dir: Path) -> list[Path]:
    """Delete what interrupted writes left in a run's checkpoints/ folder: `.tmp-*` checkpoints (never
    complete, never used; on a full disk they keep it full), `.trash-*` half-deleted ones, and the
    `.tmp-*` a resume onto another layout left inside a checkpoint. Call it when a session starts, before
    writing anything, once the session owns the run folder. Returns what was removed."""
    folder = _checkpoints_folder(run_or_checkpoints_dir)
    if not folder.is_dir():
        return []
    found = [*folder.glob(".tmp-*"), *folder.glob(".trash-*"), *folder.glob(f"{PREFIX}*/.tmp-*"), *folder.glob(f"{PREFIX}*/*/.tmp-*")]
    for leftover in found:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return found


# ---------------------------------------------------------------- choosing an intact checkpoint


@dataclass(frozen=True)
class Skipped:
    """A checkpoint passed over, and why (one line naming the damaged file)."""

    path: Path
    reason: str

    @property
    def message(self) -> str:
        return f"skipped checkpoint {self.path.name}: {self.reason}"


@dataclass(frozen=True)
class Selection:
    """The newest intact checkpoint (None: none is) and the newer ones skipped as damaged, newest first."""

    checkpoint: Path | None
    skipped: tuple[Skipped, ...] = ()

    def required(self, where: Path) -> Path:
        """The checkpoint, or CheckpointError saying why there is none in `where`."""
        if self.checkpoint is not None:
            return self.checkpoint
        if not self.skipped:
            raise CheckpointError(f"{where} holds no complete checkpoint")
        reasons = "\n".join(f"  {s.path.name}: {s.reason}" for s in self.skipped)
        raise CheckpointError(f"no intact checkpoint in {where}; each is damaged:\n{reasons}")


def select_checkpoint(run_or_checkpoints_dir: Path, *, up_to: int | None = None, files=None) -> Selection:
    """The newest checkpoint of a run (its folder or its checkpoints/ folder) that is intact
    (runtime/integrity.py), at step `up_to` or before when given (a resumed run's later checkpoints belong
    to the future it abandoned), and the newer ones skipped with the reason. `files`: check only these
    (what the caller will read). Reads every checked byte once (the newest intact one's, and the damaged
    ones' up to their first fault)."""
    skipped = []
    for path in reversed(_step_folders(_checkpoints_folder(run_or_checkpoints_dir))):
        if up_to is not None and step_of(path) > up_to:
            continue
        reason = check_checkpoint(path, files)
        if reason is None:
            return Selection(path, tuple(skipped))
        skipped.append(Skipped(path, reason))
    return Selection(None, tuple(skipped))


def require_intact(checkpoint: Path, files=None) -> Path:
    """`checkpoint` when it is intact, else CheckpointError naming the damage."""
    reason = check_checkpoint(checkpoint, files)
    if reason is not None:
        raise CheckpointError(f"checkpoint {checkpoint} is damaged: {reason}")
    return Path(checkpoint)


# ---------------------------------------------------------------- writing


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def describe_write_error(error: BaseException | None, folder: Path) -> tuple[str, bool]:
    """(reason in words, whether the disk is full) for a failed checkpoint write. Full: ENOSPC or EDQUOT
    anywhere in the exception's chain or text, or almost no free space left on the disk now (torch.save's
    "unexpected pos" names no cause)."""
    chain = list(_chain(error)) if error is not None else []
    text = " ".join(str(e) for e in chain)
    full = any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for e in chain)
    full = full or any(mark in text for mark in ("No space left", "os error 28", "Disk quota exceeded", "os error 122"))
    free = free_bytes(folder)
    full = full or (free is not None and free < FULL_BELOW)
    if full:
        return "the disk is full" + (f": {free / 2**20:.0f} MiB free" if free is not None else ""), True
    if error is None:
        return "another rank could not write its part", False
    first = str(error).strip().splitlines()
    first = first[0][:300] if first else ""
    if "unexpected pos" in first or "write failed" in first:  # torch's short write, whatever stopped it
        return f"the file system refused a write (torch: {TORCH_PREFIX.sub('', first)})", False
    return f"{type(error).__name__}: {first}".rstrip(": "), False


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
            remove_leftovers(self.folder)

    def _agreed(self, error: BaseException | None) -> bool:
        """True when no rank met an error (collective: every rank calls it at the same point)."""
        return self.engine.sync_flags(1 if error is not None else 0) == 0

    def _refused(self, final: Path, tmp: Path, error: BaseException | None, *, recoverable: bool = True) -> CheckpointWriteError:
        reason, full = describe_write_error(error, self.folder)  # before the removal frees the space
        if self.engine.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = [p for p in list_checkpoints(self.folder) if p != final]
        return CheckpointWriteError(final, reason, disk_full=full, kept=previous[-1] if previous else None, recoverable=recoverable)

    def save(self, step: int, state: dict[str, Any], rank_files: dict[str, Any] | None = None) -> Path:
        """Write checkpoint `step` with the loop's `state` (JSON-able) and this rank's `rank_files` (file
        name -> JSON-able, e.g. its stream position). Returns its folder.
        Raises CheckpointWriteError, its temporary folder removed and the previous checkpoints intact,
        when the disk refuses it."""
        engine = self.engine
        final = self.folder / f"{PREFIX}{step:06d}"
        tmp = self.folder / f".tmp-{final.name}"
        error = None
        try:
            if engine.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()  # not parents: a run folder deleted under a live run is refused, never half re-created
        except WRITE_ERRORS as caught:
            error = caught
        if not self._agreed(error):
            raise self._refused(final, tmp, error) from error
        try:
            engine.save(tmp)
            _write_json(tmp / f"rng-rank{engine.rank}.json", capture_rng())
            for name, content in (rank_files or {}).items():
                _write_json(tmp / name, content)
        except WRITE_ERRORS as caught:
            if isinstance(caught, torch.OutOfMemoryError):
                raise
            if engine.world_size > 1:  # a rank cannot leave the engine's collective save half-way: the run stops
                raise self._refused(final, tmp, caught, recoverable=False) from caught
            error = caught
        if not self._agreed(error):
            raise self._refused(final, tmp, error) from error
        try:
            if engine.is_main:
                _write_json(tmp / STATE_FILE, state)
                write_checksums(tmp)
                fsync_tree(tmp)
                if final.exists():  # the same step again (after a rollback): replace it
                    trash = self.folder / f".trash-{final.name}"
                    final.rename(trash)
                    shutil.rmtree(trash, ignore_errors=True)
                tmp.rename(final)
                fsync_path(self.folder)
        except WRITE_ERRORS as caught:
            error = caught
        if not self._agreed(error):
            raise self._refused(final, tmp, error) from error
        if engine.is_main:
            self.prune(up_to=step)
        return final

    def best(self) -> Path | None:
        """The complete checkpoint with the lowest recorded val_loss, or None (a damaged state.json counts as
        no record)."""
        scored = []
        for path in list_checkpoints(self.folder):
            try:
                val_loss = read_state(path).get("val_loss")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(val_loss, (int, float)):
                scored.append((val_loss, step_of(path), path))
        return min(scored)[2] if scored else None

    def prune(self, up_to: int | None = None) -> list[Path]:
        """Delete checkpoints beyond the newest `keep_last` (and the best one). Returns those deleted.
        `up_to`: the step just written; checkpoints after it (a resumed run's abandoned future) are neither
        counted nor deleted: training replaces them as it reaches their steps."""
        checkpoints = [p for p in list_checkpoints(self.folder) if up_to is None or step_of(p) <= up_to]
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


def stream_state_file(rank: int) -> str:
    """The file a rank's stream position (its stream loaders' state) has in a checkpoint."""
    return f"stream-rank{rank}.json"


def read_stream_state(checkpoint: Path, rank: int) -> dict[str, Any]:
    """Rank `rank`'s stream position in `checkpoint`. Raises CheckpointError where it holds none (saved by
    fewer ranks, or before the source streamed)."""
    path = Path(checkpoint) / stream_state_file(rank)
    if not path.exists():
        raise CheckpointError(f"{checkpoint.name} holds no stream position for rank {rank} ({path.name}): it was saved by fewer "
                              "ranks or before a source streamed; resume with the ranks and sources it was saved with")
    with open(path, encoding="utf-8") as handle:
        state: dict[str, Any] = json.load(handle)
    return state


# ---------------------------------------------------------------- the public tabula.load_model


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder whose weights are intact: the newest such checkpoint of a run folder (the damaged
    ones skipped with a warning in the `tabula.runtime.checkpoint` log), or the checkpoint folder given.
    Raises CheckpointError (FileNotFoundError when `path` holds no checkpoint at all)."""
    path = Path(path)
    needed = (WEIGHTS_FILE, STATE_FILE)
    if (path / STATE_FILE).is_file() or (path / WEIGHTS_FILE).is_file():
        return require_intact(path, needed)
    if not _step_folders(_checkpoints_folder(path)):
        raise FileNotFoundError(f"{path} holds no complete checkpoint (expected {CHECKPOINTS_DIR}/{PREFIX}NNNNNN/{WEIGHTS_FILE})")
    selection = select_checkpoint(path, files=needed)
    for skipped in selection.skipped:
        log.warning("%s", skipped.message)
    return selection.required(path)


def load_trained_model(spec, checkpoint: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model `spec` trained, with the weights of `checkpoint` (a folder), on `device`. A fine-tuning
    checkpoint holding the trained parameters alone is loaded over the spec's base with its method applied
    as it was trained (adapters unmerged; QLoRA's base unquantised). Raises CheckpointError."""
    from tabula.compiler.adapters import apply_finetune

    from .build import build_base_model

    try:
        vocab_size = read_state(checkpoint).get("vocab_size")
    except (OSError, ValueError):  # no state.json (weights written by hand): the embedding says it
        vocab_size = None
    if vocab_size is None:
        with safe_open(str(Path(checkpoint) / WEIGHTS_FILE), framework="pt") as handle:
            vocab_size = handle.get_slice("embed.weight").get_shape()[0]
    model = build_base_model(spec, vocab_size, device)
    if finetune_record(Path(checkpoint) / WEIGHTS_FILE) is not None:
        apply_finetune(model, spec.train.finetune, seed=spec.seed, model_spec=spec.model, quantize=False)
    load_weights(model, Path(checkpoint) / WEIGHTS_FILE)
    return model


def load_model(run_dir_or_checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained model of a run folder (its newest checkpoint) or of one checkpoint folder, on `device`,
    in eval mode. The architecture comes from the run's resolved.yaml. LoRA and DoRA adapters are merged
    into the weights (tabula's plain parameter names); prompt and prefix tuning's virtual tokens stay."""
    from tabula.compiler.adapters import merge_adapters
    from tabula.schemas.loader import load_run_spec

    checkpoint = find_checkpoint(Path(run_dir_or_checkpoint))
    spec = load_run_spec(checkpoint.parent.parent)  # relative `from` weights: against the run's spec folder
    model = load_trained_model(spec, checkpoint, device)
    if model.finetune is not None:
        merge_adapters(model)
    return model.eval()
