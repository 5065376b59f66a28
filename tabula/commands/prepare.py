"""Prepare a spec's data ahead of a run: read and filter the sources, hold out the validation
split, train or load the tokenizer, and tokenize everything into the token cache.

For sources of chat or instruction records it reports the chat template, the records skipped
(with their file and line) and how many tokens are trained on versus masked out of the loss.

The cache entry is keyed by a fingerprint of the source contents, the filters, the validation
split and the tokenizer: a second call with the same data finds it and returns at once. The
cache lives in $TABULA_CACHE_DIR, else $XDG_CACHE_HOME/tabula, else ~/.cache/tabula.

  tabula prepare specs/quickstart.yaml
  tabula prepare specs/quickstart.yaml data.validation.fraction=5% --json
"""

from __future__ import annotations

import json
import sys

HELP = "read, filter and tokenize a spec's data into the token cache"


def add_arguments(parser) -> None:
    from tabula.report import add_spec_arguments

    add_spec_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON: per source, documents in/out per filter, skipped records (count, first reasons), "
                             "characters, tokens (trained and masked); the chat template; the fingerprint; cache hit or miss; seconds")
    parser.add_argument("--cache-dir", metavar="DIR", help="the token cache folder (default: $TABULA_CACHE_DIR or ~/.cache/tabula)")


def run(args) -> int:
    from tabula.report import load_spec_or_report

    spec = load_spec_or_report(args.spec, args.overrides, allow_extends_outside=args.allow_extends_outside)
    if spec is None:
        return 2
    from tabula.runtime.data import DataError, prepare, terminal_progress
    from tabula.schemas.loader import error_at

    try:
        prepared = prepare(spec, cache_dir=args.cache_dir, progress=terminal_progress(sys.stderr))
    except DataError as error:
        # One line, pointing at the spec line that names the bad input where it can.
        located = error_at(spec, error.path, error.message) if error.path else error.message
        sys.stderr.write(f"tabula prepare: error: {located}\n")
        return 2
    report = {**prepared.report, "directory": str(prepared.directory)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_summary(report))
    return 0


def _summary(report: dict) -> str:
    tokenizer = report["tokenizer"]
    lines = [
        f"data {report['fingerprint']}  cache {report['cache']}  {report['seconds']:.2f} s",
        f"  entry      {report['directory']}",
        f"  tokenizer  {tokenizer['kind']}, {tokenizer['vocab_size']} tokens, {tokenizer['dtype']}, hash {tokenizer['hash'][:16]}",
    ]
    chat = report.get("chat")
    if chat:
        limit = f"max {chat['max_tokens']:,} tokens, cut on the {chat['truncation']}" if chat["max_tokens"] else "no length limit"
        added = f"; added to the tokenizer: {' '.join(chat['added_tokens'])}" if chat["added_tokens"] else ""
        lines.append(f"  chat       template {chat['template_from']}, {limit}{added}")
    for name, source in report["sources"].items():
        lines.append(f"  source {name}: {source['documents']:,} documents read")
        skipped = source.get("skipped", {}).get("count", 0)
        if skipped:
            lines.append(f"    skipped {skipped:,} bad record{'s' if skipped != 1 else ''}; the first:")
            lines.extend(f"      {reason}" for reason in source["skipped"]["first"])
        for step in source["filters"]:
            lines.append(f"    filter {step['index']} {step['kind']:<8} {step['in']:>10,} in {step['out']:>10,} out")
        for split in ("train", "val"):
            part = source[split]
            line = f"    {split:<5} {part['documents']:>10,} documents {part['characters']:>14,} characters {part['tokens']:>12,} tokens"
            if chat and name in chat["sources"] or "images" in source:
                line += f" ({part['trained_tokens']:,} trained, {part['masked_tokens']:,} masked)"
            lines.append(line)
        if "images" in source:
            lines.append(f"    images {source['images']['train']:,} train, {source['images']['val']:,} val: each document's image "
                         "tokens are inputs only (masked)")
        fitted = source.get("max_tokens")
        if fitted and (fitted["cut"] or fitted["dropped"]):
            lines.append(f"    max_tokens: {fitted['cut']:,} conversations cut, {fitted['dropped']:,} dropped (no trained token left)")
    for name, stream in report.get("streamed", {}).items():
        files = f" over {stream['files']:,} file{'s' if stream['files'] != 1 else ''}" if "files" in stream else ""
        lines.append(f"  source {name}: streams (cache: false){files}: read, filtered and tokenized during training by "
                     f"{stream['workers_per_rank']} worker process{'es' if stream['workers_per_rank'] != 1 else ''} a rank; "
                     "no validation split")
    for transform in report.get("transforms", []):
        lines.append(f"  transform {transform['index']} {transform['kind']}: {transform['documents']:,} training documents changed"
                     + (f"; tokens added: {' '.join(transform['tokens'][:4])}{' ...' if len(transform['tokens']) > 4 else ''}"
                        if transform["tokens"] else ""))
        example = transform.get("example")
        if example:
            lines.append(f"    before ({example['source']}): {example['before']!r}")
            lines.append(f"    after:  {example['after']!r}")
    totals = report.get("totals")
    if totals:
        share = totals["trained_tokens"] / max(totals["tokens"], 1)
        lines.append(f"  trained on {totals['trained_tokens']:,} of {totals['tokens']:,} tokens ({share:.1%}); "
                     f"{totals['masked_tokens']:,} masked out of the loss")
    for warning in report.get("warnings", []):
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
