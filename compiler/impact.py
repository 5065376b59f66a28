"""What a change between two specs does: cost before -> after, and whether a run can resume.

`tabula diff A B` prints `annotate(a, b, changes).lines()` under the list of changed paths;
the runtime asks `resume_compatibility(a, b)` before it resumes a run of A under spec B.

A run resumes across a change unless the checkpoint no longer fits or no longer means the same:
a model change that changes the weights' shapes or names (the parameter list of
`estimate.parameter_shapes` differs), any change of `data.tokenizer` (other token ids) or of the
resolved vocabulary size, a change of the optimizer's kind (its saved state has another
layout), and a change of train.finetune that changes what trains (its method, or the trained
parameters' names or shapes: a fine-tuning checkpoint holds those alone); a fine-tuning change
that keeps them (alpha, rslora, a QLoRA format) resumes with a warning, its dropout and init silently. Model changes that keep every shape (RoPE theta or scaling, a sliding window or sparse pattern, norm eps,
a norm or attention kind with the same parameters) resume with a warning: the weights load but
compute differently. Dropout (the model's and the MLP's), compile, kernels, the attention backend, init and max_seq_len (without learned positions) resume
silently, as do schedule, budget, mixture, curriculum, batch, interval, evaluation, checkpoint,
parallelism and tracking changes: they act on what happens next.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tabula.schemas.diff import Change
from tabula.schemas.errors import SpecErrors
from tabula.schemas.spec import Spec
from tabula.schemas.units import format_bytes, format_count

# model.* paths (prefixes) that act only at the start, or only on how the model is run
# (model.kernels and the attention backend compute the same function another way)
SILENT_MODEL_PATHS = ("model.dropout", "model.block.mlp.dropout", "model.compile", "model.init", "model.kernels",
                      "model.block.attention.backend")
# model.* leaves that never change a weight's shape
COMPUTE_ONLY = ("model.position.theta", "model.position.scaling", "model.block.attention.window", "model.block.attention.sparse",
                "model.block.norm.eps")

# why a change breaks resuming, or resumes with a caveat: short, since `tabula diff` shows it under
# each change it applies to and once more, with the paths, in its summary
RESHAPES = "reshapes the weights, so a checkpoint does not load"
RETOKENIZES = "changes the tokenizer, so the checkpoint learned other token ids"
NEW_OPTIMIZER = "changes the optimizer, whose saved state has another layout"
RETRAINS = "changes what trains, so the checkpoint's trained parameters and optimizer state do not fit"
COMPUTES_DIFFERENTLY = "the weights compute differently (the loss may jump)"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}, 'c': [2]} -> {'a.b': 1, 'c.0': 2}; empty dicts and lists stay leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, (list, tuple)) and value:
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return out
    return {prefix: value}


def changed_paths(a: Spec, b: Spec) -> list[str]:
    """Dotted paths whose resolved values differ between `a` and `b` (added and removed included)."""
    flat_a, flat_b = flatten(a.model_dump(mode="json")), flatten(b.model_dump(mode="json"))
    return sorted(path for path in flat_a.keys() | flat_b.keys() if flat_a.get(path, object()) != flat_b.get(path, object()))


def resume_compatibility(a: Spec, b: Spec) -> tuple[bool, list[str]]:
    """(True, []) when a run trained with spec `a` can resume under spec `b`, else (False, one
    reason a line, each starting with the spec path it is about)."""
    breaks, _ = _resume_checks(a, b)
    reasons = [f"{path} {why}" for path, why in breaks]
    return not reasons, reasons


def _resume_checks(a: Spec, b: Spec) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(breaks, warnings): (path, why) for the changes a run cannot resume across, and for those
    it resumes across with weights that compute differently."""
    from .estimate import parameter_shapes, trainable_shapes

    breaks, warnings = [], []
    if a.vocab_size != b.vocab_size:
        breaks.append(("model.vocab_size", f"(resolved) changes from {a.vocab_size} to {b.vocab_size}: the embedding's shape differs"))
    vocab = a.vocab_size or b.vocab_size or 1  # the same on both sides: shapes apart from the vocabulary
    reshaped = parameter_shapes(a.model, vocab) != parameter_shapes(b.model, vocab)
    learned = "learned" in (a.model.position.kind, b.model.position.kind)
    methods = [spec.train.finetune.kind if spec.train.finetune else None for spec in (a, b)]
    retrained = methods[0] != methods[1] or trainable_shapes(a, vocab) != trainable_shapes(b, vocab)
    for path in changed_paths(a, b):
        if path.startswith("model."):
            kind_path = _as_default_block(path)
            if path == "model.vocab_size" or kind_path.startswith(SILENT_MODEL_PATHS):
                continue
            if path == "model.max_seq_len" and not learned:
                continue  # no weight depends on it unless positions are learned
            if reshaped and not kind_path.startswith(COMPUTE_ONLY):
                breaks.append((path, RESHAPES))
            else:
                warnings.append((path, COMPUTES_DIFFERENTLY))
        elif path.startswith("data.tokenizer."):
            breaks.append((path, RETOKENIZES))
        elif path == "train.optimizer.kind":
            breaks.append((path, NEW_OPTIMIZER))
        elif path.startswith("train.finetune"):
            if retrained:
                breaks.append((path, RETRAINS))
            elif not path.endswith((".dropout", ".init")):
                warnings.append((path, COMPUTES_DIFFERENTLY))
    return breaks, warnings


def _as_default_block(path: str) -> str:
    """A path inside a layer override's block (model.layers.<j>.block.x) as the same path in model.block."""
    return re.sub(r"^model\.layers\.\d+\.block\.", "model.block.", path)


QUANTITIES = (
    ("parameters", "parameters", ""),
    ("flops_per_token", "FLOPs/token", ""),
    ("memory_per_rank", "memory per rank", "bytes"),
    ("total_steps", "total steps", ""),
)


@dataclass(frozen=True)
class Quantity:
    key: str  # in as_dict()
    name: str  # in lines()
    before: float | None
    after: float | None
    unit: str = ""  # "" (a count) or "bytes"

    def line(self) -> str:
        before, after = _format(self.before, self.unit), _format(self.after, self.unit)
        if self.before == self.after:
            return f"{self.name:<18} {before} (unchanged)"
        change = ""
        if self.before and self.after is not None:
            change = f" ({(self.after - self.before) / self.before:+.1%})"
        return f"{self.name:<18} {before} -> {after}{change}"


@dataclass(frozen=True)
class Impact:
    """Cost before -> after and resume compatibility of going from spec A to spec B."""

    quantities: tuple[Quantity, ...]
    resumable: bool
    reasons: tuple[str, ...]
    resume_breaking: tuple[str, ...]  # the changed paths that break resuming
    warnings: tuple[str, ...] = field(default=())  # changes a run resumes across, computing differently
    notes: tuple[str, ...] = field(default=())
    # (path, why) pairs behind `reasons` and `warnings`, for lines() to group by why
    break_findings: tuple[tuple[str, str], ...] = field(default=())
    warning_findings: tuple[tuple[str, str], ...] = field(default=())

    def lines(self) -> list[str]:
        """The summary under the diff: one line a quantity, then whether a run of A resumes under
        B, each reason once with the paths it is about."""
        out = [q.line() for q in self.quantities]
        if self.resumable:
            out.append("resume             a run of A can resume under B" + (", but:" if self.warnings else ""))
            out += _grouped(self.warning_findings) if self.warning_findings else [f"  {w}" for w in self.warnings]
        else:
            out.append("resume             a run of A cannot resume under B:")
            out += _grouped(self.break_findings) if self.break_findings else [f"  {r}" for r in self.reasons]
        out += [f"note: {note}" for note in self.notes]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            **{q.key: {"before": q.before, "after": q.after} for q in self.quantities},
            "resume": {"compatible": self.resumable, "reasons": list(self.reasons), "breaking_paths": list(self.resume_breaking),
                       "warnings": list(self.warnings)},
            "notes": list(self.notes),
        }


def annotate(a: Spec, b: Spec, changes: list[Change] | None = None, *, device_type: str | None = None) -> Impact:
    """The impact of the change from `a` to `b`, costs planned for `device_type` (default: this
    machine's). `changes` (the diff's Change list, each with a dotted `.path` and an `.impact`
    slot) get their slot filled where they break resuming; None computes the changed paths here."""
    from .plan import local_device_type

    device_type = device_type or local_device_type()
    notes: list[str] = []
    costs = [_costs(spec, device_type, notes, label) for spec, label in ((a, "A"), (b, "B"))]
    quantities = tuple(Quantity(key, name, costs[0].get(key), costs[1].get(key), unit) for key, name, unit in QUANTITIES)
    breaks, warnings = _resume_checks(a, b)
    breaking = []
    for change in changes or []:
        if _annotate_change(change, breaks, "breaks resuming: "):
            breaking.append(change.path)
        else:
            _annotate_change(change, warnings, "resumable, but ")
    if changes is None:
        breaking = [path for path, _ in breaks]
    reasons = tuple(f"{path} {why}" for path, why in breaks)
    return Impact(quantities, not breaks, reasons, tuple(breaking), tuple(f"{path} {why}" for path, why in warnings),
                  tuple(notes), tuple(breaks), tuple(warnings))


def _grouped(findings: tuple[tuple[str, str], ...]) -> list[str]:
    """`  why: path, path` lines, one a distinct reason, in the order first found."""
    paths: dict[str, list[str]] = {}
    for path, why in findings:
        paths.setdefault(why, []).append(path)
    return [f"  {why}: {', '.join(members)}" for why, members in paths.items()]


def _annotate_change(change: Change, findings: list[tuple[str, str]], prefix: str) -> bool:
    """Fill `change.impact` from the findings at or below (or above) its path; whether any applied."""
    found = [(path, why) for path, why in findings if _within(path, change.path) or _within(change.path, path)]
    if found:
        change.impact = prefix + "; ".join(why if path == change.path else f"{path} {why}" for path, why in found)
    return bool(found)


def _within(path: str, prefix: str) -> bool:
    """Whether dotted `path` is `prefix` or below it."""
    return path == prefix or path.startswith(prefix + ".")


def _costs(spec: Spec, device_type: str, notes: list[str], label: str) -> dict[str, float]:
    from .estimate import estimate
    from .plan import make_plan

    try:
        plan = make_plan(spec, device_type=device_type)
    except SpecErrors as error:  # a spec that cannot be planned still diffs
        notes.append(f"{label} cannot be planned: {error.errors[0].message}")
        return {}
    est = estimate(spec, plan, device_type=device_type)
    return {
        "parameters": est.parameters.total,
        "flops_per_token": est.flops_per_token,
        "memory_per_rank": est.memory_per_rank["total"],
        "total_steps": plan.total_steps,
    }


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "?"
    if unit == "bytes":
        return format_bytes(value, decimals=2)
    return f"{format_count(value, digits=4)} {unit}".strip()
