"""The runtime is a library: it imports nothing of the CLI, never parses a command line, never prints,
and knows no exit code; the `tabula` command keeps the one table of exit codes. Read from the source
(the AST), so a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime"
PACKAGES = ["tabula", "schemas", "compiler", "runtime", "tui"]
CLI_MODULES = ("tabula.report", "tabula.commands", "tabula.cli", "tabula.exit_codes", "argparse")


def _python_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, absolute (relative imports resolved against its package)."""
    package = ["tabula", *path.relative_to(ROOT).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return found


def test_the_runtime_imports_nothing_of_the_cli_and_no_argparse():
    offenders = {}
    for path in _python_files(RUNTIME):
        bad = [m for m in _imports(path) if any(m == c or m.startswith(c + ".") for c in CLI_MODULES)]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(set(bad))
    assert not offenders, offenders


def test_the_import_check_sees_lazy_and_relative_imports(tmp_path):
    """The check above is only as good as `_imports`: it must find imports inside functions."""
    sample = RUNTIME / "session.py"
    found = _imports(sample)
    assert "tabula.runtime.errors.RunInputError" in found  # `from .errors import ...` at the top
    assert "tabula.compiler.impact" in found  # inside resume_changes


def test_the_runtime_prints_nothing_but_the_console():
    """Errors are raised, not printed: only the console (progress lines passed in by the caller) writes."""
    offenders = []
    for path in _python_files(RUNTIME):
        if path.name == "console.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} print()")
            if (isinstance(node, ast.Attribute) and node.attr == "write" and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "stderr"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} sys.stderr.write")
    assert not offenders, offenders


def _defines_exit_codes(path: Path) -> list[str]:
    """Names in `path` that look like an exit-code table: whole numbers bound to EXIT_* names, or a class
    named for exit codes."""

    def is_number(value: ast.expr) -> bool:
        if isinstance(value, ast.Tuple):
            return all(is_number(item) for item in value.elts)
        return isinstance(value, ast.Constant) and type(value.value) is int

    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        # "exit" as a word of the name (ExitCode, EXIT_CODES), not inside one (Perplexity)
        words = [word.lower() for word in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", node.name)] if isinstance(node, ast.ClassDef) else []
        if "exit" in words:
            names.append(node.name)
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and is_number(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [leaf.id for target in targets for leaf in ast.walk(target)
                      if isinstance(leaf, ast.Name) and leaf.id.startswith("EXIT_")]
    return names


def test_there_is_one_table_of_exit_codes():
    tables = {}
    for package in PACKAGES:
        for path in _python_files(ROOT / package):
            names = _defines_exit_codes(path)
            if names:
                tables[str(path.relative_to(ROOT))] = names
    assert list(tables) == ["tabula/exit_codes.py"], tables


def test_the_exit_codes_are_the_documented_ones():
    from tabula.exit_codes import ExitCode, stopped_by

    assert [(code.name, int(code)) for code in ExitCode] == [("OK", 0), ("DIFFERS", 1), ("BAD_INPUT", 2), ("RUN_FAILED", 3)]
    assert (stopped_by("SIGINT"), stopped_by("SIGTERM")) == (130, 143)


def test_only_the_import_command_imports_transformers():
    """transformers is a development dependency: the schemas, compiler and runtime (which loads pretrained
    weights itself) never import it; only `tabula import` does, to read a checkpoint's config.json."""
    offenders = {}
    for package in PACKAGES:
        for path in _python_files(ROOT / package):
            if path.relative_to(ROOT).as_posix() == "tabula/commands/import_model.py":
                continue
            bad = [m for m in _imports(path) if m == "transformers" or m.startswith("transformers.")]
            if bad:
                offenders[str(path.relative_to(ROOT))] = sorted(set(bad))
    assert not offenders, offenders
