"""TensorBoard event files, written as Aim records the run (`tracking.py`) and off the hot path the same way
(a background thread). Rank 0 only; only with `track.tensorboard` set.

Each run writes into `<track.tensorboard.dir>/<run folder name>/`, so `tensorboard --logdir DIR` shows the
runs side by side. Recorded against the optimizer step (as in Aim): the train metrics under `train/`
(loss, lr, grad_norm, tokens_per_s, mfu, memory, step_time, tokens), validation loss and perplexity under
`val/`, the benchmark scores under `benchmark/<task>/<metric>`, each sample as text (`sample`), and once
the hyperparameters (the resolved spec's scalars by dotted path, the model's parameters, trainable
parameters, fine-tuning method) in TensorBoard's HParams plugin, with `val/loss` as its metric. A resumed
run appends to the same folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .tracking import TRAIN_METRICS, BackgroundListener

if TYPE_CHECKING:
    from tabula.schemas.spec import Spec

    from .rundir import RunDir


class TensorBoardTracker(BackgroundListener):
    name = "TensorBoard"

    def __init__(self, *, log_dir: str | Path, hparams: dict[str, Any],
                 on_error: Callable[[str], None] | None = None) -> None:
        super().__init__(on_error=on_error)
        self.log_dir = Path(log_dir)
        self._hparams = hparams
        self.start()

    def _open(self):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir.mkdir(parents=True, exist_ok=True)
        return SummaryWriter(log_dir=str(self.log_dir), flush_secs=30)

    def _record(self, writer, event: dict) -> None:
        kind, step = event["kind"], event["step"]
        if kind == "start":
            self._write_hparams(writer, event)
        elif kind == "train":
            for name in TRAIN_METRICS:
                value = event.get(name)
                if value is not None:
                    writer.add_scalar(f"train/{name}", value, step)
            writer.add_scalar("train/tokens", event["tokens"], step)
        elif kind == "eval":
            if event.get("val_loss") is not None:
                writer.add_scalar("val/loss", event["val_loss"], step)
            if event.get("val_ppl") is not None:
                writer.add_scalar("val/ppl", event["val_ppl"], step)
        elif kind == "benchmark":
            for task, metrics in (event.get("results") or {}).items():
                for metric, value in metrics.items():
                    if isinstance(value, (int, float)):
                        writer.add_scalar(f"benchmark/{task}/{metric}", value, step)
        elif kind == "sample":
            writer.add_text("sample", _markdown(event["prompt"] + event["text"]), step)
        elif kind == "end":
            writer.add_text("status", f"{event['reason']}" + (f": {event['error']}" if event.get("error") else ""), step)
            writer.flush()

    def _write_hparams(self, writer, event: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = dict(self._hparams)
        for name in ("parameters", "trainable_parameters", "finetune"):
            if event.get(name) is not None:
                values[name] = event[name]
        experiment, start, end = hparams(values, {"val/loss": float("nan")})
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)

    def _finish(self, writer) -> None:
        writer.close()


def flat_hparams(data: Any, prefix: str = "") -> dict[str, Any]:
    """The scalars of a nested dict/list by dotted path (`train.optimizer.lr`): what HParams can show.
    Lists of scalars read as text."""
    flat: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            flat.update(flat_hparams(value, f"{prefix}{key}."))
    elif isinstance(data, list):
        if all(isinstance(item, (int, float, str, bool)) for item in data):
            flat[prefix[:-1]] = str(data)
        else:
            for index, value in enumerate(data):
                flat.update(flat_hparams(value, f"{prefix}{index}."))
    elif isinstance(data, (int, float, str, bool)):
        flat[prefix[:-1]] = data
    return flat


def _markdown(text: str) -> str:
    """TensorBoard renders text as Markdown: a sample is code, shown as written."""
    return "    " + text.replace("\n", "\n    ")


def make_tensorboard(spec: Spec, run: RunDir, warn: Callable[[str], None]) -> TensorBoardTracker | None:
    """The TensorBoard tracker for rank 0, or None without track.tensorboard."""
    settings = spec.track.tensorboard
    if settings is None:
        return None
    from tabula.schemas.canonical import canonical_dict

    return TensorBoardTracker(log_dir=Path(settings.dir) / run.name, hparams=flat_hparams(canonical_dict(spec)),
                              on_error=warn)
