"""Find a learning rate: the exponential range test (Smith 2017). The spec's model trains from its fresh
initialisation on its own data (first curriculum stage, its optimizer and batch) while the rate grows
from --min to --max over --steps steps, stopping when the loss diverges. Nothing is written to any run.

Prints the smoothed loss against the rate, writes it as a PNG, and suggests a rate: the valley rule
(the longest falling stretch of the loss, about half-way down it), beside the steepest slope. The
suggestion is printed as an override line; --apply writes it into SPEC's train.optimizer.lr, keeping the
file's comments and layout.

  tabula lr-find specs/quickstart.yaml
  tabula lr-find specs/quickstart.yaml --steps 60 --min 1e-5 --max 0.1 --apply

Exit status: 0, 2 on bad input (spec, flags, data).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HELP = "suggest a learning rate with the exponential range test (Smith 2017)"
LR_PATH = ("train", "optimizer", "lr")


def add_arguments(parser) -> None:
    from tabula.report import add_spec_arguments

    add_spec_arguments(parser)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of the ramp (default 100)")
    parser.add_argument("--min", dest="min_lr", type=float, default=1e-7, help="the first rate (default 1e-7)")
    parser.add_argument("--max", dest="max_lr", type=float, default=1.0, help="the last rate (default 1)")
    parser.add_argument("--apply", action="store_true",
                        help="write the suggestion into SPEC's train.optimizer.lr (comments and layout kept)")
    parser.add_argument("--png", metavar="FILE", help="where to write the plot (default: lr-find-<spec name>.png)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: a GPU when there is one)")
    parser.add_argument("--cache-dir", metavar="DIR", help="the token cache folder (default: $TABULA_CACHE_DIR or ~/.cache/tabula)")
    parser.add_argument("--no-plot", action="store_true", help="skip the terminal plot (the PNG is still written)")


def run(args) -> int:
    from tabula.report import load_spec_or_report

    if args.steps < 5:
        return _bad("--steps must be at least 5")
    if not 0 < args.min_lr < args.max_lr:
        return _bad(f"the range needs 0 < --min < --max (got {args.min_lr:g} and {args.max_lr:g})")
    spec = load_spec_or_report(args.spec, args.overrides, allow_extends_outside=args.allow_extends_outside)
    if spec is None:
        return 2
    from tabula.runtime.data import DataError
    from tabula.runtime.evaluation.lr_find import range_test
    from tabula.runtime.evaluation.plots import png_plot, terminal_plot

    def progress(step: int, lr: float, loss: float) -> None:
        if step % 10 == 0:
            sys.stderr.write(f"step {step:4d}  lr {lr:.3g}  loss {loss:.4f}\n")

    try:
        result = range_test(spec, steps=args.steps, min_lr=args.min_lr, max_lr=args.max_lr, cache_dir=args.cache_dir,
                            device=args.device, on_step=progress)
    except (DataError, ValueError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "device" not in str(error).lower():
            raise
        return _bad(str(error))
    marks = {name: value for name, value in (("valley", result.valley), ("steepest", result.steepest)) if value}
    curve = {"loss (smoothed)": list(zip(result.lrs, result.smoothed))}
    title = f"LR range test: {spec.name} ({len(result.lrs)} steps of {result.batch_tokens} tokens)"
    if not args.no_plot and len(result.lrs) > 1:
        width = min(shutil.get_terminal_size((100, 24)).columns, 140)
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        print(terminal_plot(curve, title=title, xlabel="learning rate", ylabel="loss", log_x=True, width=width, height=22,
                            marks=marks, color=color))
    png = png_plot({**curve, "loss": list(zip(result.lrs, result.losses))}, args.png or f"lr-find-{spec.name}.png",
                   title=title, xlabel="learning rate (log scale)", ylabel="training loss", log_x=True, marks=marks)
    print(f"plot: {png}")
    print(f"stopped: {result.stopped}")
    print(f"steepest slope: {_rate(result.steepest)}   valley: {_rate(result.valley)}")
    if result.suggestion is None:
        return _bad("too few steps before the loss diverged to suggest a rate: lower --min or raise --steps")
    suggestion = round_rate(result.suggestion)
    print(f"suggested (valley rule): {'.'.join(LR_PATH)}={suggestion:g}   (the spec has {spec.train.optimizer.lr:g})")
    if args.apply:
        return _apply(args, suggestion)
    return 0


def round_rate(lr: float) -> float:
    """Two significant digits: a rate the range test cannot tell more finely."""
    return float(f"{lr:.2g}")


def _apply(args, suggestion: float) -> int:
    from tabula.report import print_errors
    from tabula.schemas.errors import SpecErrors
    from tabula.schemas.loader import load_spec
    from tabula.schemas.yaml_edit import set_in_file

    try:
        before = set_in_file(args.spec, LR_PATH, suggestion)
    except (ValueError, OSError, SpecErrors) as error:
        return _bad(f"cannot write {args.spec}: {error}")
    try:
        load_spec(args.spec, allow_extends_outside=args.allow_extends_outside)
    except SpecErrors as errors:  # the file must still be a valid spec: put it back
        Path(args.spec).write_text(before, encoding="utf-8")
        print_errors(errors.errors)
        return _bad(f"{args.spec} left unchanged: the spec with the new rate was refused")
    print(f"wrote {'.'.join(LR_PATH)}: {suggestion:g} into {args.spec}")
    return 0


def _rate(value: float | None) -> str:
    return f"{value:.3g}" if value is not None else "-"


def _bad(message: str) -> int:
    sys.stderr.write(f"tabula lr-find: error: {message}\n")
    return 2
