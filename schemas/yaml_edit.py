"""Change one value in a spec file and keep everything else as written: comments, key order, flow or block
style, quoting (ruamel.yaml's round trip). For commands that write a result back into the user's spec
(`tabula lr-find --apply`). Torch-free."""

from __future__ import annotations

import difflib
import io
import os
import re
from pathlib import Path
from typing import Any

from .yaml_source import read_text


def set_in_text(text: str, path: tuple[str, ...], value: Any) -> str:
    """`text` (a YAML mapping) with the value at `path` set to `value` (a number, bool or plain string).

    A key that is there has its value's characters replaced in place, so nothing else of the file moves.
    A missing key is added (with the mappings missing on the way: a spec that `extends` another may not
    name it yet) by ruamel.yaml's round trip, in the sequence indentation closest to the file's own.
    ValueError when something on the way is not a mapping."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    data = _yaml().load(text)
    if data is None:
        data = CommentedMap()
    node = data
    for depth, key in enumerate(path):
        if not isinstance(node, dict):
            raise ValueError(f"{'.'.join(path[:depth]) or 'the file'} is not a mapping")
        if key not in node or node[key] is None or depth == len(path) - 1:
            break
        node = node[key]
    else:  # pragma: no cover - the loop always breaks at the last key
        pass
    last = path[-1]
    if depth == len(path) - 1 and last in node and not isinstance(node[last], (dict, list)):
        line, column = node.lc.value(last)
        lines = text.splitlines(keepends=True)
        match = _SCALAR.match(lines[line], column)
        if match:
            lines[line] = lines[line][:column] + _scalar(value) + lines[line][match.end():]
            return "".join(lines)
    for key in path[depth:-1]:  # add what is missing
        node[key] = CommentedMap()
        node = node[key]
    node[last] = value
    dumps = []
    for sequence, offset in ((4, 2), (2, 0)):
        yaml = _yaml()
        yaml.indent(mapping=2, sequence=sequence, offset=offset)
        out = io.StringIO()
        yaml.dump(data, out)
        dumps.append(out.getvalue())
    return min(dumps, key=lambda dumped: _changed_lines(text, dumped))


_SCALAR = re.compile(r"""'(?:[^']|'')*'|"(?:[^"\\]|\\.)*"|[^\s,}\]#]+""")


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap the user's long lines
    return yaml


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text if ("." in text or "e" in text or "inf" in text or "nan" in text) else text + ".0"
    return str(value)


def _changed_lines(before: str, after: str) -> int:
    return sum(1 for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-")


def set_in_file(file: str | Path, path: tuple[str, ...], value: Any) -> str:
    """Write `value` at `path` into the YAML file, atomically (a temporary file renamed over it). Returns
    the text it had before (to put back if the new spec is refused)."""
    file = Path(file)
    before = read_text(file)
    after = set_in_text(before, path, value)
    temporary = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    temporary.write_text(after, encoding="utf-8")
    os.replace(temporary, file)
    return before
