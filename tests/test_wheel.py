"""`pip install .` gives a tabula that works outside the repository: a wheel built from the checkout's
files, installed into a fresh virtual environment, validates and trains a spec that `extends:` a preset
from another folder, and `tabula --version` names the commit it was built from.

The fresh environment gets the wheel alone (--no-deps); its dependencies come from this environment's
site-packages through a .pth line (a path entry only: that folder's own .pth files, among them this
checkout's editable install, are not run), so the test needs no network and no second torch install.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

SPEC = """\
extends: llama-tiny          # resolved from the installed package, not from a checkout
name: wheel-check
model: {d_model: 48, n_layers: 1, max_seq_len: 32, block: {mlp: {kind: swiglu, hidden: 96}}}
data:
  tokenizer: {kind: bpe, vocab_size: 300, max_chars: 64k}
  sources: {stdlib: {kind: python_stdlib, max_files: 10}}
  curriculum: [{seq_len: 32, mix: {stdlib: 1.0}}]
train:
  batch_tokens: 256
  budget: {tokens: 1k}
  eval: null
  checkpoint: {every_tokens: 1k, keep_last: 1}
track: {runs_dir: runs, aim: {enabled: false}}
"""


def checkout_files() -> list[str]:
    """The files a fresh clone of this working tree has: tracked and new, less what git ignores."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"not a git checkout: {out.stderr.strip()}")
    return [name for name in out.stdout.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel built from a copy of the checkout installed; returns its bin/."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    env = {**os.environ, "TABULA_BUILD_COMMIT": "test-commit-1234"}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp / "dist")], capture_output=True, text=True, env=env, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("tabula-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    Path(purelib, "_tabula_test_deps.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return venv / "bin"


def run(bin_dir: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TABULA_SPECS_DIR")}
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_installed_package_is_the_wheel_with_its_data(installed, tmp_path):
    where = run(installed, tmp_path, "python", "-c",
                "import tabula, tabula.schemas.loader as l; print(tabula.__file__); print(l.PRESETS_DIR)")
    assert where.returncode == 0, where.stderr
    package, presets = where.stdout.split()
    assert Path(package).is_relative_to(installed.parent), "tabula imported from outside the fresh venv"
    assert not Path(package).is_relative_to(ROOT)
    assert {p.name for p in Path(presets).glob("*.yaml")} >= {"llama-tiny.yaml", "mla-tiny.yaml"}
    assert (Path(package).parent / "schemas" / "tabula-spec.schema.json").is_file()


def test_version_names_the_commit_the_wheel_was_built_from(installed, tmp_path):
    out = run(installed, tmp_path, "tabula", "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "tabula 0.1.0 (commit test-commit-1234)"


def test_validate_and_train_a_spec_that_extends_a_preset_from_another_folder(installed, tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    checked = run(installed, tmp_path, "tabula", "validate", "spec.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    trained = run(installed, tmp_path, "tabula", "run", "spec.yaml", "--headless", "--run-dir", "runs/w")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    run_dir = tmp_path / "runs" / "w"
    assert (run_dir / "events.jsonl").is_file()
    assert any((run_dir / "checkpoints").iterdir())
    # the resolved spec names the preset it came from and the width the override set
    assert "d_model: 48" in (run_dir / "spec.yaml").read_text()
