"""The documentation site builds strictly (a broken link, a missing page or a generated reference that
fails to build fails here), and every command the docs show as run (`$ tabula ...` in a console block)
still works.

Commands run in order, page by page, from a scratch folder that sees the checkout's specs/ (so the
relative paths the docs use resolve) with its own token cache. Commands that train or tokenize the
quickstart get overrides that shrink its data and model (SHRINK), so the suite stays short: what is
checked is that the command, its flags and the spec still work, not the full run's minutes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TABULA = Path(sys.executable).with_name("tabula")
MKDOCS = Path(sys.executable).with_name("mkdocs")

pytestmark = pytest.mark.slow

# Commands that train or tokenize: the data and the model made small, the steps few.
SHRINK = {
    "quickstart": ["model.d_model=64", "model.n_layers=1", "model.block.mlp.hidden=128", "data.tokenizer.vocab_size=300",
                   "data.tokenizer.max_chars=64k", "data.sources.stdlib.max_files=10", "train.batch_tokens=512",
                   "model.compile.enabled=false", "track.aim.enabled=false"],
}
TRAINS = {"run", "prepare"}
EXIT_OK = {"diff": {0, 1}}  # diff exits 1 when the specs differ, as documented


def doc_commands() -> list[tuple[str, int, str]]:
    """(page, line, command) for every `$ tabula ...` line inside a ```console block of docs/."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        inside = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                inside = line.strip() == "```console" if not inside else False
                continue
            if inside and line.startswith("$ tabula "):
                found.append((str(page.relative_to(DOCS)), number, line[2:].strip()))
    return found


def test_the_site_builds_strictly(tmp_path):
    built = subprocess.run([str(MKDOCS), "build", "--strict", "--quiet", "-d", str(tmp_path / "site")], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stdout + built.stderr
    site = tmp_path / "site"
    for page in ("index.html", "reference/spec/index.html", "reference/cli/index.html", "specs/quickstart/index.html",
                 "guides/finetuning/index.html", "architecture/index.html"):
        assert (site / page).is_file(), page
    spec_reference = (site / "reference/spec/index.html").read_text()
    # generated from the schema: a field deep in the tree, its description and an example from a shipped spec
    assert "document_masking" in spec_reference and "Stop attention from crossing document boundaries" in spec_reference
    cli_reference = (site / "reference/cli/index.html").read_text()
    assert "tabula export" in cli_reference and "--allow-extends-outside" in cli_reference


def test_the_docs_show_commands():
    commands = doc_commands()
    assert len(commands) >= 8, commands
    assert {shlex.split(c)[1] for _, _, c in commands} >= {"validate", "plan", "run", "prepare", "diff"}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("doc-commands")
    (folder / "specs").symlink_to(ROOT / "specs")
    (folder / "runs").mkdir()  # `tabula runs` lists it whatever ran before (an empty folder: "no runs")
    return folder


@pytest.mark.parametrize("page,line,command", doc_commands(), ids=lambda v: str(v) if isinstance(v, int) else None)
def test_a_documented_command_works(scratch, page, line, command):
    argv = shlex.split(command)[1:]
    name = argv[0]
    if name in TRAINS:
        for spec, extra in SHRINK.items():
            if any(Path(arg).stem == spec for arg in argv):
                argv += extra
    env = {**os.environ, "TABULA_CACHE_DIR": str(scratch / "cache"), "NO_COLOR": "1"}
    done = subprocess.run([str(TABULA), *argv], cwd=scratch, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode in EXIT_OK.get(name, {0}), (
        f"docs/{page}:{line}: `{command}` exited {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    if "--json" in argv and name != "diff":
        assert re.match(r"\s*[\[{]", done.stdout), done.stdout[:200]
