"""Write specs/data/chat-sample.jsonl: short chat conversations for the fine-tuning example.

Deterministic and offline: arithmetic questions from a seeded generator, and questions about
functions of the Python standard library answered with the first paragraph of their own
docstrings (real text on every machine; it varies a little between Python versions, which is
why the file is committed rather than generated at run time). One JSON object a line:
{"messages": [{"role": ..., "content": ...}, ...]}.

    python specs/data/make_chat_sample.py            # rewrites specs/data/chat-sample.jsonl
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
from pathlib import Path

SEED = 14
ARITHMETIC = 300
DOCSTRINGS = 300
SYSTEM = "You are a concise assistant who answers questions about arithmetic and the Python standard library."
MODULES = (
    "math", "statistics", "string", "textwrap", "json", "os.path", "shutil", "itertools", "functools", "operator",
    "collections", "heapq", "bisect", "random", "datetime", "calendar", "re", "difflib", "base64", "hashlib",
    "zlib", "gzip", "csv", "fnmatch", "glob", "tempfile", "time", "copy", "pprint", "keyword", "html", "urllib.parse",
    "shlex", "secrets", "uuid", "unicodedata", "locale", "struct", "binascii", "colorsys",
)
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve").split()


def arithmetic(rng: random.Random) -> list[dict[str, str]]:
    """One or two turns of arithmetic on small numbers."""
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice("+-*")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    ask = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?", "Please work out {a} {op} {b}."])
    messages = [{"role": "user", "content": ask.format(a=a, op=op, b=b)}, {"role": "assistant", "content": f"{a} {op} {b} = {value}."}]
    if rng.random() < 0.3:
        c = rng.randint(2, 12)
        messages += [
            {"role": "user", "content": f"And if you add {NUMBER_WORDS[c] if c < len(NUMBER_WORDS) else c} to that?"},
            {"role": "assistant", "content": f"{value} + {c} = {value + c}."},
        ]
    if rng.random() < 0.25:
        messages.insert(0, {"role": "system", "content": SYSTEM})
    return messages


def documented_functions() -> list[tuple[str, str]]:
    """(qualified name, first paragraph of its docstring) of the public functions of MODULES."""
    found = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in sorted(vars(module)):
            value = getattr(module, name)
            if name.startswith("_") or not (inspect.isfunction(value) or inspect.isbuiltin(value)):
                continue
            if getattr(value, "__module__", None) not in (module_name, module.__name__, f"_{module_name}", None):
                continue  # re-exported from elsewhere
            doc = inspect.getdoc(value) or ""
            paragraph = " ".join(doc.split("\n\n")[0].split())
            if 20 <= len(paragraph) <= 300 and "(" not in paragraph[:1]:
                found.append((f"{module_name}.{name}", paragraph))
    return found


def docstring(rng: random.Random, name: str, paragraph: str) -> list[dict[str, str]]:
    ask = rng.choice(["What does {n} do?", "Explain {n} in one sentence.", "What is {n} for?", "Describe the function {n}."])
    return [{"role": "user", "content": ask.format(n=f"`{name}`")}, {"role": "assistant", "content": f"`{name}`: {paragraph}"}]


def conversations() -> list[list[dict[str, str]]]:
    rng = random.Random(SEED)
    chats = [arithmetic(rng) for _ in range(ARITHMETIC)]
    functions = documented_functions()
    chats += [docstring(rng, *item) for item in rng.sample(functions, min(DOCSTRINGS, len(functions)))]
    rng.shuffle(chats)
    return chats


def main() -> None:
    path = Path(__file__).with_name("chat-sample.jsonl")
    lines = [json.dumps({"messages": messages}, ensure_ascii=False) for messages in conversations()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} conversations ({path.stat().st_size // 1024} KiB) to {path}")


if __name__ == "__main__":
    main()
