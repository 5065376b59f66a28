"""Check spec files: YAML, every key and value, the cross-field rules, extends and overrides.

Prints every error found (not only the first) with the file, line and column, a source excerpt
and a caret, what was expected and what was found, and the closest valid key for a typo.
Overrides (a.b.c=value, values parsed as YAML) apply to every SPEC given.

  tabula validate specs/quickstart.yaml
  tabula validate specs/*.yaml specs/presets/*.yaml
  tabula validate specs/quickstart.yaml model.n_layers=8 --json

--json prints one JSON object a line, one per file: file, valid, spec_hash, errors (each with
path, line, column, message, expected, found, suggestion, file).
Exit status: 0 when every spec is valid, 2 otherwise.
"""

from __future__ import annotations

import json
import sys

HELP = "check spec files and print every error with its position"


def add_arguments(parser) -> None:
    from tabula.report import add_spec_arguments

    add_spec_arguments(parser, many=True)
    parser.add_argument("--json", action="store_true", help="one JSON object per file instead of text")


def run(args) -> int:
    from tabula.report import print_errors, split_spec_and_overrides
    from tabula.schemas.canonical import spec_hash
    from tabula.schemas.errors import SpecErrors
    from tabula.schemas.loader import load_spec

    specs, overrides = split_spec_and_overrides(args.items)
    if not specs:
        sys.stderr.write("tabula validate: error: no SPEC given (only overrides)\n")
        return 2
    all_valid = True
    for path in specs:
        try:
            spec = load_spec(path, overrides, allow_extends_outside=args.allow_extends_outside)
        except SpecErrors as raised:
            all_valid = False
            if args.json:
                print(json.dumps({"file": path, "valid": False, "spec_hash": None,
                                  "errors": [error.as_dict() for error in raised.errors]}))
            else:
                print_errors(raised.errors)
                count = len(raised.errors)
                sys.stderr.write(f"{path}: {count} error{'s' if count != 1 else ''}\n\n")
            continue
        digest = spec_hash(spec)
        if args.json:
            print(json.dumps({"file": path, "valid": True, "spec_hash": digest, "errors": []}))
        else:
            print(f"{path}: ok ({spec.name}, spec {digest[:12]})")
    return 0 if all_valid else 2
