"""Evaluate a trained model: benchmarks through lm-evaluation-harness, or perplexity on a text file.

TARGET is a run folder (its newest intact checkpoint), one checkpoint folder, or a Hugging Face export
folder (`tabula export`: config.json and model.safetensors, evaluated by lm-eval's own HF model).
For a run, results are saved in RUN_DIR/eval/ (`tabula runs` shows them), appended as a `benchmark` event
(the dashboard shows it) and recorded in the run's Aim run and TensorBoard folder.

Tasks are lm-eval's names, or local task YAML under --include folders (with local data files: a task
whose data needs a download fails offline with one line).

  tabula eval runs/quickstart-20261128-101500 --tasks arc_easy,hellaswag --limit 200
  tabula eval runs/tiny --tasks my_task --include tasks/ --batch-size 16
  tabula eval runs/tiny --text held_out.txt

Exit status: 0, 2 on bad input (target, task, file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HELP = "benchmark a run or export with lm-evaluation-harness, or its perplexity on a text"


def add_arguments(parser) -> None:
    parser.add_argument("target", metavar="RUN_DIR|CHECKPOINT|HF_EXPORT_DIR", help="what to evaluate")
    parser.add_argument("--tasks", help="comma-separated lm-eval task names (e.g. arc_easy,hellaswag)")
    parser.add_argument("--include", action="append", default=[], metavar="DIR",
                        help="a folder of local lm-eval task YAML (repeatable)")
    parser.add_argument("--limit", type=float, help="at most N examples a task (below 1: a fraction of each)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences scored in one forward pass (default 8)")
    parser.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's own)")
    parser.add_argument("--text", metavar="FILE", help="perplexity on this UTF-8 text file instead of benchmarks")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    parser.add_argument("--no-cache", action="store_true", help="do not reuse lm-eval's request cache (RUN_DIR/eval/cache)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")


def run(args) -> int:
    target = Path(args.target)
    if not target.is_dir():
        return _bad(f"{target} is not a folder (a run, a checkpoint or a Hugging Face export)")
    if not args.text and not args.tasks:
        return _bad("say what to evaluate: --tasks NAME[,NAME...] or --text FILE")
    if args.text and not Path(args.text).is_file():
        return _bad(f"--text: {args.text} is not a file")
    if args.batch_size < 1:
        return _bad("--batch-size must be at least 1")
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    for folder in args.include:
        if not Path(folder).is_dir():
            return _bad(f"--include: {folder} is not a folder")
    from tabula.runtime.errors import TabulaError

    try:
        loaded = _load(target, args)
        if args.text:
            return _perplexity(loaded, args)
        return _benchmarks(loaded, args, limit)
    except (TabulaError, FileNotFoundError) as error:
        return _bad(str(error))


class _Loaded:
    def __init__(self, lm, *, run_dir: Path | None, checkpoint: Path | None, spec, count_tokens):
        self.lm, self.run_dir, self.checkpoint, self.spec, self.count_tokens = lm, run_dir, checkpoint, spec, count_tokens


def _load(target: Path, args) -> _Loaded:
    if (target / "config.json").is_file() and not (target / "resolved.yaml").is_file():
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=str(target), batch_size=args.batch_size, device=args.device)
        return _Loaded(lm, run_dir=None, checkpoint=None, spec=None,
                       count_tokens=lambda text: len(lm.tok_encode(text, add_special_tokens=False)))
    from tokenizers import Tokenizer

    from tabula.runtime.checkpoint import find_checkpoint, load_model
    from tabula.runtime.errors import RunInputError
    from tabula.runtime.evaluation.harness import TabulaLM
    from tabula.schemas.loader import load_run_spec
    from tabula.schemas.rundir_protocol import TOKENIZER_FILE

    checkpoint = find_checkpoint(target)
    run_dir = checkpoint.parent.parent
    if not (run_dir / TOKENIZER_FILE).is_file():
        raise RunInputError(f"{run_dir} has no {TOKENIZER_FILE}: not a run folder")
    tokenizer = Tokenizer.from_file(str(run_dir / TOKENIZER_FILE))
    spec = load_run_spec(run_dir)
    eos = tokenizer.token_to_id(spec.data.tokenizer.eos_token) if hasattr(spec.data.tokenizer, "eos_token") else None
    model = load_model(checkpoint, device=args.device)
    lm = TabulaLM(model, tokenizer, eos_id=eos, batch_size=args.batch_size, device=args.device, name=run_dir.name)
    return _Loaded(lm, run_dir=run_dir, checkpoint=checkpoint, spec=spec, count_tokens=lambda text: len(lm.encode(text)))


def _perplexity(loaded: _Loaded, args) -> int:
    from tabula.runtime.evaluation.perplexity import text_perplexity

    result = text_perplexity(loaded.lm, args.text, count_tokens=loaded.count_tokens)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(f"{args.text}: {result.tokens} tokens, {result.bytes} bytes")
        print(f"perplexity {result.perplexity:.4f}   loss {result.nll / max(result.tokens, 1):.4f} nats/token   "
              f"{result.bits_per_byte:.4f} bits/byte")
    return 0


def _benchmarks(loaded: _Loaded, args, limit) -> int:
    from tabula.runtime.evaluation.harness import evaluate_tasks
    from tabula.runtime.evaluation.record import record_event, record_trackers, save_results

    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    cache = None
    if loaded.run_dir is not None and loaded.checkpoint is not None and not args.no_cache:
        cache = loaded.run_dir / "eval" / "cache" / loaded.checkpoint.name
        cache.parent.mkdir(parents=True, exist_ok=True)
    results = evaluate_tasks(loaded.lm, names, include=args.include, limit=limit, num_fewshot=args.num_fewshot, cache=cache)
    if args.json:
        print(json.dumps(results.scores, indent=2))
    else:
        for line in results_table(results.scores):
            print(line)
    if loaded.run_dir is not None:
        saved = save_results(loaded.run_dir, results, checkpoint=loaded.checkpoint)
        notes = [note for note in [record_event(loaded.run_dir, results, checkpoint=loaded.checkpoint)] if note]
        notes += record_trackers(loaded.run_dir, loaded.spec, results, checkpoint=loaded.checkpoint)
        print(f"saved: {saved}", file=sys.stderr if args.json else sys.stdout)
        for note in notes:
            sys.stderr.write(f"tabula eval: warning: {note}\n")
    return 0


def results_table(scores: dict[str, dict[str, float]]) -> list[str]:
    rows = [(task, metric, f"{value:.4f}") for task, metrics in scores.items() for metric, value in metrics.items()]
    header = ("task", "metric", "value")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def _bad(message: str) -> int:
    sys.stderr.write(f"tabula eval: error: {message}\n")
    return 2
