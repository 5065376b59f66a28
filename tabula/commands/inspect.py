"""Look inside a trained model on a text: attention heatmaps per layer and head (PNG), the loss of each
token given the ones before it (which tokens surprise the model), and a logit lens (the top next-token
guesses after each layer). In a terminal the three open in a screen (layer and head chosen with keys);
with --no-tui, or when the output is not a terminal, they are printed. The attention weights are recomputed for this one forward from the queries
and keys each attention module computes (MHA, GQA, MQA, sliding windows, MLA); training never does.

  tabula inspect runs/quickstart-20261128-101500 --prompt "import os" --out inspect/

Exit status: 0, 2 on bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path

HELP = "attention heatmaps, per-token loss and a logit lens of a trained run on a text"


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (its newest intact checkpoint) or a checkpoint folder")
    parser.add_argument("--prompt", required=True, help="the text to inspect (cut to the model's context)")
    parser.add_argument("--out", metavar="DIR", help="where the PNGs go (default: RUN_DIR/inspect/)")
    parser.add_argument("--top", type=int, default=3, help="guesses a layer in the logit lens (default 3)")
    parser.add_argument("--no-tui", action="store_true", help="print the per-token loss and the logit lens instead of opening the screen")


def run(args) -> int:
    from tokenizers import Tokenizer

    from tabula.runtime.checkpoint import find_checkpoint, load_model
    from tabula.runtime.errors import TabulaError
    from tabula.runtime.evaluation.interpret import inspect_text, write_heatmaps, write_token_loss
    from tabula.schemas.rundir_protocol import TOKENIZER_FILE

    if not args.prompt:
        return _bad("--prompt is empty")
    try:
        checkpoint = find_checkpoint(Path(args.run_dir))
    except (TabulaError, FileNotFoundError) as error:
        return _bad(str(error))
    run_dir = checkpoint.parent.parent
    if not (run_dir / TOKENIZER_FILE).is_file():
        return _bad(f"{run_dir} has no {TOKENIZER_FILE}: not a run folder")
    tokenizer = Tokenizer.from_file(str(run_dir / TOKENIZER_FILE))
    model = load_model(checkpoint)
    start = tokenizer.token_to_id("<|endoftext|>")
    result = inspect_text(model, tokenizer, args.prompt, start_id=start if start is not None else 0, top_k=max(1, args.top))
    out = Path(args.out) if args.out else run_dir / "inspect"
    title = run_dir.name
    paths = write_heatmaps(result, out, title=title)
    paths.append(write_token_loss(result, out / "token-loss.png", title=title))
    if not args.no_tui and sys.stdin.isatty() and sys.stdout.isatty():
        from tabula.tui.app import InspectApp
        from tabula.tui.inspect import InspectData

        note = f"{len(paths)} PNGs in {out}"
        InspectApp(InspectData(title=title, tokens=result.tokens, attention=[w.tolist() for w in result.attention],
                               token_loss=result.token_loss, lens=result.lens, note=note)).run()
        print(f"wrote {note}")
        return 0
    print("per-token loss (nats; the first token is the start of text)")
    for token, loss in zip(result.tokens, result.token_loss):
        print(f"  {repr(token):<20} {'-' if loss is None else f'{loss:7.3f}'}")
    print("\nlogit lens: the top next-token guesses after each layer, at the last position")
    for layer, guesses in enumerate(result.lens):
        print(f"  layer {layer:2d}: " + "  ".join(f"{token!r} {p:.2f}" for token, p in guesses[-1]))
    print(f"\nwrote {len(paths)} PNGs in {out}")
    return 0


def _bad(message: str) -> int:
    sys.stderr.write(f"tabula inspect: error: {message}\n")
    return 2
