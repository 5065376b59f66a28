"""Print the JSON Schema of a spec (draft-07, what editors implement), generated from the spec
models: every key, its type, default and description.

Editors use it to complete keys, show each field's help and check a spec as you type. For the
YAML language server (VS Code's YAML extension, Neovim, Helix...), start a spec with

  # yaml-language-server: $schema=../schemas/tabula-spec.schema.json

(the path relative to the spec file). A copy lives at schemas/tabula-spec.schema.json; after
changing the spec models, refresh it with `tabula schema --out schemas/tabula-spec.schema.json`.
"""

from __future__ import annotations

import sys
from pathlib import Path

HELP = "print the JSON Schema of a spec (for editors)"


def add_arguments(parser) -> None:
    parser.add_argument("--out", metavar="FILE", help="write the schema to FILE instead of standard output")


def run(args) -> int:
    from tabula.schemas.jsonschema import schema_text

    text = schema_text()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as error:
        sys.stderr.write(f"tabula schema: error: cannot write {out}: {error.strerror}\n")
        return 2
    sys.stderr.write(f"wrote {out}\n")
    return 0
