"""MkDocs hook: the reference pages are generated at build time, never hand-copied.

- reference/spec.md from the JSON Schema (`tabula.schemas.jsonschema`, what `tabula schema` writes):
  every section and kind, each field's type, default, description, and an example taken from the
  shipped specs where one uses the field.
- reference/cli.md from the argument parsers (`tabula.cli.build_parser`): every command's usage,
  description and options.
- specs/<name>.md for every shipped spec and preset: what its header comment says, and its YAML.
"""

from __future__ import annotations

import argparse
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
SPEC_FOLDERS = (ROOT / "specs", ROOT / "specs" / "presets")
NOTEBOOKS = ROOT / "notebooks"


def on_files(files: Files, config: Any) -> Files:
    for path, content in generated_pages().items():
        files.append(File.generated(config, path, content=content))
    return files


def generated_pages() -> dict[str, str]:
    pages = {"reference/spec.md": spec_reference(), "reference/cli.md": cli_reference()}
    for spec in shipped_specs():
        pages[f"specs/{spec.stem}.md"] = spec_page(spec)
    pages["specs/index.md"] = specs_index()
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        pages[f"notebooks/{notebook.stem}.md"] = notebook_page(notebook)
    pages["notebooks/index.md"] = notebooks_index()
    return pages


def shipped_specs() -> list[Path]:
    return [path for folder in SPEC_FOLDERS for path in sorted(folder.glob("*.yaml"))]


# ------------------------------------------------------------------ spec reference


def _schema() -> dict[str, Any]:
    from tabula.schemas.jsonschema import json_schema

    return json_schema()


def _ref_name(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _anchor(name: str) -> str:
    return name.lower()


def _type(node: dict[str, Any]) -> str:
    """A field's type in words, linking the definitions it refers to."""
    name = _ref_name(node)
    if name:
        return f"[{name}](#{_anchor(name)})"
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    for key in ("oneOf", "anyOf"):
        if key in node:
            kinds = node.get("discriminator", {}).get("mapping")
            if kinds:
                return "one of: " + ", ".join(f"[{kind}](#{_anchor(ref.rsplit('/', 1)[-1])})" for kind, ref in kinds.items())
            return " or ".join(_type(option) for option in node[key])
    kind = node.get("type")
    if kind == "array":
        items = node.get("items", {})
        if isinstance(items, list):
            return "[" + ", ".join(_type(item) for item in items) + "]"
        return f"list of {_type(items)}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of name → {_type(node['additionalProperties'])}"
    bounds = [f"{word} {node[key]}" for key, word in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                                       ("maximum", "≤"), ("exclusiveMaximum", "<")) if key in node]
    text = str(kind) if kind else "any"
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _examples(schema: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(definition, field) -> a value some shipped spec writes for it (the first found)."""
    from ruamel.yaml import YAML

    definitions = schema["definitions"]
    found: dict[tuple[str, str], str] = {}

    def walk(value: Any, node: dict[str, Any]) -> None:
        name = _ref_name(node)
        if name:
            return walk(value, definitions[name]) if name in definitions else None
        for key in ("oneOf", "anyOf"):
            for option in node.get(key, []):
                target = definitions.get(_ref_name(option) or "", option)
                if isinstance(value, dict) and target.get("type") == "object":
                    kind = target.get("properties", {}).get("kind", {}).get("const")
                    if kind is None or value.get("kind", kind) == kind:
                        return walk(value, option)
                elif not isinstance(value, dict):
                    walk(value, option)
        if isinstance(value, list) and "items" in node:
            items = node["items"]  # a schema, or one schema a position (a tuple such as betas)
            for index, item in enumerate(value):
                if isinstance(items, dict) or index < len(items):
                    walk(item, items if isinstance(items, dict) else items[index])
        if isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
            for item in value.values():
                walk(item, node["additionalProperties"])
        owner = node.get("title")
        if isinstance(value, dict) and "properties" in node:
            for field, item in value.items():
                if field in node["properties"]:
                    if owner and (owner, field) not in found:
                        found[(owner, field)] = _flow(item)
                    walk(item, node["properties"][field])

    root = definitions["Spec"]
    for spec in shipped_specs():
        walk(YAML(typ="safe").load(spec.read_text()), root)
    return found


def _flow(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def spec_reference() -> str:
    schema = _schema()
    definitions = {name: node for name, node in schema["definitions"].items() if not name.endswith("Partial")}
    examples = _examples(schema)
    out = io.StringIO()
    out.write("# Spec reference\n\n")
    out.write("Generated from the JSON Schema (`tabula schema`, committed at `schemas/tabula-spec.schema.json`) "
              "when the site is built: every section and kind, every field with its type, default and description. "
              "Examples come from the shipped specs (see [Shipped specs](../specs/index.md)). Token counts accept "
              "`64k`, `10M`, `2.5B` (k = 1024); fractions `2%` or `0.02`. Unknown keys are errors.\n\n")
    order = ["Spec"] + sorted(name for name in definitions if name != "Spec")
    for name in order:
        node = definitions[name]
        out.write(f"## {name}\n\n{node.get('description', '').strip()}\n\n")
        properties = node.get("properties", {})
        if not properties:
            out.write(f"Type: {_type(node)}\n\n")
            continue
        required = set(node.get("required", []))
        out.write("| field | type | default | description | example |\n|---|---|---|---|---|\n")
        for field, prop in properties.items():
            default = "required" if field in required else (f"`{_flow(prop['default'])}`" if "default" in prop else "")
            description = " ".join(str(prop.get("description", "")).split()).replace("|", "\\|")
            example = examples.get((name, field), "")
            example = f"`{example}`".replace("|", "\\|") if example else ""
            out.write(f"| `{field}` | {_type(prop)} | {default} | {description} | {example} |\n")
        out.write("\n")
    return out.getvalue()


# ------------------------------------------------------------------ CLI reference


def cli_reference() -> str:
    from tabula.cli import build_parser

    parser = build_parser()
    out = io.StringIO()
    out.write("# Command reference\n\nGenerated from the argument parsers when the site is built "
              "(`tabula COMMAND --help` prints the same).\n\n")
    out.write(f"```text\n{parser.format_help()}```\n\n")
    sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        out.write(f"## tabula {name}\n\n```text\n{command.format_help()}```\n\n")
    return out.getvalue()


# ------------------------------------------------------------------ shipped specs


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if "yaml-language-server" not in line:
            lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def spec_page(path: Path) -> str:
    text = path.read_text()
    where = path.relative_to(ROOT)
    about = _header(text) or "A shipped spec."
    return (f"# {path.stem}\n\n{about}\n\n`{where}`"
            + (f" — use it as a base with `extends: {path.stem}`." if path.parent.name == "presets" else ".")
            + f"\n\n```yaml\n{text}```\n")


def specs_index() -> str:
    rows: dict[str, list[str]] = defaultdict(list)
    for path in shipped_specs():
        group = "Presets (`extends: NAME`)" if path.parent.name == "presets" else "Example specs"
        rows[group].append(f"| [{path.stem}]({path.stem}.md) | {_header(path.read_text())[:160]} |")
    out = "# Shipped specs\n\nEvery spec that ships with tabula, generated from `specs/` when the site is built.\n\n"
    for group, lines in rows.items():
        out += f"## {group}\n\n| spec | what it is |\n|---|---|\n" + "\n".join(lines) + "\n\n"
    return out


# ------------------------------------------------------------------ notebooks


def notebook_page(path: Path) -> str:
    """The notebook's markdown cells as text and its code cells as Python blocks (the test suite runs it)."""
    cells = json.loads(path.read_text())["cells"]
    out = []
    for cell in cells:
        source = "".join(cell["source"])
        out.append(source if cell["cell_type"] == "markdown" else f"```python\n{source}\n```")
    where = path.relative_to(ROOT)
    return "\n\n".join(out) + f"\n\nThe notebook: `{where}` (`jupyter lab {where}`); the test suite runs it.\n"


def notebooks_index() -> str:
    rows = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        title = "".join(cells[0]["source"]).splitlines()[0].lstrip("# ") if cells else path.stem
        rows.append(f"- [{title}]({path.stem}.md)")
    return ("# Notebooks\n\nRunnable examples in `notebooks/`, each executed on a CPU by the test suite "
            "(tests/test_notebooks.py).\n\n" + "\n".join(rows) + "\n")
