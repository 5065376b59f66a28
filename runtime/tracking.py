"""Aim tracking, off the hot path: events go into a queue; a background thread opens the Aim run and
records them. Rank 0 only; `track.aim.enabled: false` skips it entirely.

Recorded: the resolved spec as params (`run["spec"]`), spec hash, git commit and tags as run
properties, the parameters, trainable parameters and fine-tuning method (`train.finetune.kind` or None)
of the `start` event as hparams, train metrics (loss, lr, grad_norm, tokens_per_s, mfu, memory, tokens) with context
`{"subset": "train"}`, validation loss and perplexity with `{"subset": "val"}`, samples as text.
A resumed run continues the same Aim run (its hash is kept in manifest.json).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from tabula.schemas.spec import Spec

    from .rundir import RunDir

TRAIN_METRICS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "memory", "step_time")
MAX_TRACKED_EXPERTS = 256  # (layer, expert) series Aim records each expert's load for; beyond, the busiest a layer
_STOP = object()


def index_run(repo_path: str | Path, run_hash: str) -> None:
    """Fold a closed run into the repository's index, so `aim.Repo(path).get_run(hash)` finds it without
    `aim up` running (Aim indexes in the background of its UI server otherwise)."""
    import aim
    from aim.sdk.index_manager import RepoIndexManager

    RepoIndexManager.get_index_manager(aim.Repo(str(repo_path))).index(run_hash)


class AimTracker:
    """A listener for the EventWriter. `on_ready(run_hash)` is called from the thread once the Aim run
    exists; `on_error(message)` if Aim cannot be used (the run goes on without it)."""

    def __init__(
        self,
        *,
        repo: str | Path,
        experiment: str,
        run_name: str,
        params: dict[str, Any],
        properties: dict[str, Any],
        tags: list[str],
        resume_hash: str | None = None,
        on_ready: Callable[[str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.repo = str(repo)
        self._queue: queue.Queue = queue.Queue()
        self._args = (experiment, run_name, params, properties, tags, resume_hash)
        self._on_ready = on_ready
        self._on_error = on_error
        self.run_hash: str | None = None
        self._thread = threading.Thread(target=self._work, name="tabula-aim", daemon=True)
        self._thread.start()

    def __call__(self, event: dict) -> None:
        self._queue.put(event)

    def close(self, timeout: float = 60.0) -> None:
        """Record what is queued, close the Aim run and index it."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread

    def _open(self):
        import aim

        experiment, run_name, params, properties, tags, resume_hash = self._args
        Path(self.repo).mkdir(parents=True, exist_ok=True)
        run = None
        if resume_hash:
            try:
                run = aim.Run(run_hash=resume_hash, repo=self.repo, experiment=experiment)
            except Exception:  # the old Aim run is gone (repo moved or deleted): start a new one
                run = None
        if run is None:
            run = aim.Run(repo=self.repo, experiment=experiment)
            run.name = run_name
            run["spec"] = params
            for key, value in properties.items():
                run[key] = value
            for tag in tags:
                run.add_tag(tag)
        return run

    def _work(self) -> None:
        try:
            run = self._open()
        except Exception as error:  # never take the training down with the tracker
            if self._on_error:
                self._on_error(f"Aim tracking is off for this run: {type(error).__name__}: {error}")
            while self._queue.get() is not _STOP:
                pass
            return
        self.run_hash = run.hash
        if self._on_ready:
            self._on_ready(run.hash)
        while True:
            event = self._queue.get()
            if event is _STOP:
                break
            try:
                self._record(run, event)
            except Exception as error:
                if self._on_error:
                    self._on_error(f"Aim could not record a {event.get('kind')} event: {error}")
        run.close()
        try:
            index_run(self.repo, run.hash)
        except Exception:
            pass  # indexing is a convenience; `aim up` indexes on its own

    @staticmethod
    def _record(run, event: dict) -> None:
        import aim

        kind, step = event["kind"], event["step"]
        if kind == "start":  # hparams beside the spec: the model's size and what a fine-tuning method trains of it
            run["parameters"] = event.get("parameters")
            run["trainable_parameters"] = event.get("trainable_parameters")
            run["finetune"] = event.get("finetune")
        elif kind == "train":
            context = {"subset": "train"}
            for name in TRAIN_METRICS:
                value = event.get(name)
                if value is not None:
                    run.track(value, name=name, step=step, context=context)
            run.track(event["tokens"], name="tokens", step=step, context=context)
        elif kind == "routing":  # a mixture of experts: balancing loss, imbalance, each layer's expert shares
            context = {"subset": "train"}
            run.track(event["balance_loss"], name="balance_loss", step=step, context=context)
            run.track(event["imbalance"], name="expert_imbalance", step=step, context=context)
            shares = event["load"]
            for layer, row in enumerate(shares):  # the busiest expert's share a layer; each expert's where they are few
                run.track(max(row), name="busiest_expert_share", step=step, context={"subset": "train", "moe_layer": layer})
                if sum(len(r) for r in shares) <= MAX_TRACKED_EXPERTS:
                    for expert, share in enumerate(row):
                        run.track(share, name="expert_load", step=step, context={"subset": "train", "moe_layer": layer, "expert": expert})
        elif kind == "eval":
            context = {"subset": "val"}
            if event.get("val_loss") is not None:
                run.track(event["val_loss"], name="loss", step=step, context=context)
            if event.get("val_ppl") is not None:
                run.track(event["val_ppl"], name="ppl", step=step, context=context)
        elif kind == "sample":
            run.track(aim.Text(event["prompt"] + event["text"]), name="sample", step=step)
        elif kind == "end":
            run["status"] = event["reason"]
            if event.get("error"):
                run["error"] = event["error"]


def make_tracker(spec: Spec, run: RunDir, spec_hash: str, warn: Callable[[str], None]) -> AimTracker | None:
    """The Aim tracker for rank 0, or None when track.aim.enabled is false."""
    aim = spec.track.aim
    if not aim.enabled:
        return None
    from tabula.schemas.canonical import canonical_dict

    manifest = run.read_manifest()
    git = manifest.get("git") or {}
    previous = manifest.get("aim") or {}
    repo = Path(aim.repo).resolve()

    def ready(run_hash: str) -> None:
        if previous.get("run_hash") != run_hash:
            run.update_manifest(aim={"repo": str(repo), "run_hash": run_hash})

    return AimTracker(
        repo=repo,
        experiment=aim.experiment or spec.name,
        run_name=run.name,
        params=canonical_dict(spec),
        properties={"spec_hash": spec_hash, "git_commit": git.get("commit"), "git_dirty": git.get("dirty"),
                    "run_dir": str(run.path.resolve()), "tabula_version": manifest.get("tabula_version")},
        tags=list(spec.track.tags),
        resume_hash=previous.get("run_hash") if Path(previous.get("repo", "")) == repo else None,
        on_ready=ready,
        on_error=warn,
    )
