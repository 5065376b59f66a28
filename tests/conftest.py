"""Shared test set-up: markers that skip cleanly where a test cannot run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


MULTIPROC_TIMEOUT_S = 1800  # a cold DeepSpeed op build adds ~3 min a launch; a module's first test pays its launches


def _heaviest_files_first(items) -> None:
    """Under pytest-xdist (`make test`): the files that launch ranks first, then the other slow ones, then the
    rest, each file's tests in their order, so that the two workers do not end on one long file while the
    other waits (with --no-loadscope-reorder the workers take the files in this order)."""
    weight: dict = {}
    for item in items:
        own = 0 if item.get_closest_marker("multiproc") else 1 if item.get_closest_marker("slow") else 2
        weight[item.path] = min(weight.get(item.path, 2), own)
    items.sort(key=lambda item: weight[item.path])  # stable: a file's tests stay together and in order


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _heaviest_files_first(items)
    for item in items:
        if item.get_closest_marker("multiproc") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(MULTIPROC_TIMEOUT_S))
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_hub_downloads(monkeypatch, tmp_path_factory):
    """Nothing may download at test time: the hubs are switched offline for every test, and
    tiktoken's cache is a folder of the test session's (tabula never lets tiktoken download)."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tiktoken-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tabula_cache(tmp_path, monkeypatch):
    """A private token cache for a test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TABULA_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def specs_dir() -> Path:
    return SPECS


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs the suite in 2 pytest-xdist workers (one a core on CI's 2 cores): each worker computes on
# one thread, and so do the processes it starts (OMP_NUM_THREADS), so that the workers do not fight over the
# cores. A run without xdist keeps torch's default.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch as _torch

    _torch.set_num_threads(1)
# huggingface_hub and datasets read these once, when first imported (possibly at collection):
# set them before any test module imports them, not only in the per-test fixture.
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

# CI runs the property tests on a fixed sequence of examples (a landing is never decided by the draw);
# elsewhere every run draws new ones, and the failing examples found are kept in .hypothesis/.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")
