"""Show or clear tabula's caches: the token cache (tokenized data, one entry a data fingerprint) and the
compile cache (torch.compile's graphs and kernels, one folder a torch version, with one entry for each
model that compiled there, so that `tabula plan` knows its next compile is warm).

Both live in the tabula cache folder: --cache-dir, else $TABULA_CACHE_DIR, else $XDG_CACHE_HOME/tabula,
else ~/.cache/tabula. Clearing asks nothing and prints what it removed; the next run rebuilds what it
needs (tokenizing again, compiling cold).

  tabula cache                        list the entries and their sizes
  tabula cache clear                  remove both caches
  tabula cache clear --compile        remove the compile cache only (e.g. after a compiler upgrade)
  tabula cache clear --tokens         remove the token cache only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tabula.schemas.units import format_bytes, format_count

HELP = "show the token and compile caches and their sizes, or clear them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["show", "clear"], default="show",
                        help="show (default) lists the caches; clear removes them")
    parser.add_argument("--compile", action="store_true", help="with clear: only the compile cache")
    parser.add_argument("--tokens", action="store_true", help="with clear: only the token cache")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR",
                        help="the tabula cache folder (default: $TABULA_CACHE_DIR, $XDG_CACHE_HOME/tabula or ~/.cache/tabula)")
    parser.add_argument("--json", action="store_true", help="show: print one JSON object")


def run(args: argparse.Namespace) -> int:
    from tabula.runtime.data.cache import cache_root

    root = cache_root(args.cache_dir)
    if args.action == "show":
        if args.compile or args.tokens:
            sys.stderr.write("tabula cache: error: --compile and --tokens go with `clear`\n")
            return 2
        return _show(root, args.json)
    return _clear(root, compile_too=args.compile or not args.tokens, tokens_too=args.tokens or not args.compile)


def _show(root: Path, as_json: bool) -> int:
    from tabula.compiler.compile_cache import compile_root, list_versions
    from tabula.runtime.data.cache import list_token_entries

    tokens = list_token_entries(root)
    versions = list_versions(root)
    if as_json:
        print(json.dumps({
            "root": str(root),
            "tokens": {"size": sum(e.size for e in tokens), "entries": [
                {"path": str(e.path), "size": e.size, "sources": list(e.sources), "tokens": e.tokens,
                 "vocab_size": e.vocab_size, "modified": e.modified} for e in tokens]},
            "compile": {"size": sum(v.size for v in versions), "versions": [
                {"torch": v.version, "current": v.current, "path": str(v.path), "size": v.size, "models": list(v.models)}
                for v in versions]},
        }, indent=2))
        return 0
    lines = [f"tabula cache  {root}", ""]
    lines.append(f"token cache: {len(tokens)} entr{'y' if len(tokens) == 1 else 'ies'}, {format_bytes(sum(e.size for e in tokens))}")
    for e in tokens:
        sources = ", ".join(e.sources) or "-"
        lines.append(f"  {e.path.name[:12]}  {format_bytes(e.size):>10}  {format_count(e.tokens):>6} tokens  "
                     f"vocabulary {e.vocab_size or '-'}  {sources}  ({_when(e.modified)})")
    lines += ["", f"compile cache: {format_bytes(sum(v.size for v in versions))}  ({compile_root(root)})"]
    for v in versions:
        state = "" if v.current else "  (another torch: never read, safe to clear)"
        lines.append(f"  torch {v.version}  {format_bytes(v.size):>10}  {len(v.models)} model{'s' if len(v.models) != 1 else ''}{state}")
        for model in v.models:
            how = f"{model.get('scope', '?')} scope, {model.get('mode', '?')}"
            lines.append(f"    {str(model.get('key', '?'))[:12]}  {model.get('name', '?'):<20} {how}, "
                         f"{model.get('graphs', '?')} graphs in {model.get('seconds', '?')} s  (used {_when(model.get('last_used'))})")
    if not versions:
        lines.append("  empty: runs that compile keep their graphs here")
    print("\n".join(lines))
    return 0


def _clear(root: Path, *, compile_too: bool, tokens_too: bool) -> int:
    from tabula.compiler.compile_cache import clear, compile_root
    from tabula.runtime.data.cache import clear_tokens

    if tokens_too:
        count, size = clear_tokens(root)
        print(f"removed {count} token cache entr{'y' if count == 1 else 'ies'} ({format_bytes(size)}) from {root}")
    if compile_too:
        count, size = clear(root)
        print(f"removed the compile cache of {count} torch version{'s' if count != 1 else ''} ({format_bytes(size)}) "
              f"from {compile_root(root)}")
    return 0


def _when(timestamp) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(timestamp)))
    except (TypeError, ValueError):
        return "-"
