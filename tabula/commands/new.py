"""Write a new spec in a form generated from the schema: every field with its help, choices as
selects, nested sections you can fold, live validation (the messages `tabula validate` gives) and
a live plan (parameters, memory per rank, steps). Saving writes YAML with short comments and is
refused while the spec is invalid.

Starts from --from (a spec file or a preset: quickstart, llama-tiny, mistral-tiny, mla-tiny,
tabulaprima-278m ...), or from FILE when it exists, or from the quickstart spec.
Saving over a file that is not empty asks first (the YAML is written anew: comments of your own
in it are not kept); --force replaces it without asking. The saved spec's first line names the
JSON schema for editors (yaml-language-server): relative inside the tabula repository, else
absolute.
Keys: ctrl+s save, ctrl+q quit, tab to move between fields.
"""

from __future__ import annotations

import sys
from pathlib import Path

HELP = "write a spec in a form generated from the schema (the wizard)"
SCHEMA_FILE = "tabula-spec.schema.json"


def add_arguments(parser) -> None:
    from tabula.report import add_extends_flag

    parser.add_argument("-o", "--output", metavar="FILE", type=Path, help="where to save (default: <name>.yaml here)")
    parser.add_argument("--from", dest="start", metavar="SPEC_OR_PRESET", help="start from this spec file or preset")
    parser.add_argument("--force", action="store_true", help="replace an existing FILE on save without asking")
    add_extends_flag(parser)


def run(args) -> int:
    from tabula.tui.spec_source import DEFAULT_START, SourceError, load_start

    try:
        output_is_dir = args.output is not None and args.output.is_dir()
        given = args.output is not None and args.output.is_file() and args.output.stat().st_size > 0  # an empty file: a place to write
    except (OSError, ValueError) as error:  # a name too long for a file name
        sys.stderr.write(f"tabula new: error: -o {args.output}: {getattr(error, 'strerror', None) or error}\n")
        return 2
    if output_is_dir:
        sys.stderr.write(f"tabula new: error: {args.output} is a directory; -o takes a file name, e.g. "
                         f"{args.output / 'experiment.yaml'}\n")
        return 2
    start = args.start or (str(args.output) if given else DEFAULT_START)
    try:
        data = load_start(start, allow_extends_outside=args.allow_extends_outside)
    except SourceError as error:
        sys.stderr.write(f"tabula new: error: {error}\n")
        return 2
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        sys.stderr.write("tabula new: error: the wizard needs a terminal (write the YAML by hand, or run it in one)\n")
        return 2
    import tabula.schemas
    from tabula.schemas import Spec
    from tabula.tui.app import WizardApp
    from tabula.tui.plan_rows import plan_rows
    from tabula.tui.wizard import WizardScreen

    schema_file = Path(tabula.schemas.__file__).with_name(SCHEMA_FILE)  # committed, and shipped as package data
    saved = WizardApp(lambda: WizardScreen(Spec, data, output=args.output, planner=plan_rows, source=start,
                                           header=f"written by `tabula new` from {start}", force=args.force,
                                           schema_file=schema_file if schema_file.is_file() else None)).run()
    print(f"saved {saved}; check it with: tabula validate {saved}" if saved else "nothing saved")
    return 0
