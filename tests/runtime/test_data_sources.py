"""Sources and tokenizers that need the network or a missing package fail with one clear DataError
(the hubs are offline in every test); the progress reporter writes plain lines off a terminal."""

from __future__ import annotations

import io

import numpy as np
import pytest
from data_helpers import document, make_spec, write_texts

from tabula.runtime.data import DataError, prepare, terminal_progress


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    """huggingface_hub and datasets read HF_HUB_OFFLINE once, when imported: where another test
    module imported them at collection, before conftest set it, patch what they read (else each
    offline test waits ~24 s on network retries)."""
    import sys

    if "huggingface_hub.constants" in sys.modules:
        monkeypatch.setattr(sys.modules["huggingface_hub.constants"], "HF_HUB_OFFLINE", True)
    if "datasets.config" in sys.modules:
        monkeypatch.setattr(sys.modules["datasets.config"], "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(sys.modules["datasets.config"], "HF_DATASETS_OFFLINE", True)


def test_hub_source_offline_is_a_clear_error(tabula_cache):
    spec = make_spec({"sources": {"web": {"kind": "hub", "name": "no-such-org/no-such-dataset"}}})
    with pytest.raises(DataError) as error:
        prepare(spec)
    assert error.value.source == "web" and "needs the network" in str(error.value)
    assert not list(tabula_cache.glob("*/meta.json")) and not list(tabula_cache.glob(".tmp-*"))


@pytest.mark.parametrize("tokenizer, words", [
    ({"kind": "hub", "name": "no-such-org/no-such-tokenizer"}, "needs the network"),
    ({"kind": "tiktoken", "encoding": "cl100k_base"}, "tiktoken"),
])
def test_tokenizers_that_cannot_load_offline(tmp_path, tabula_cache, tokenizer, words):
    folder = write_texts(tmp_path / "c", [document(np.random.default_rng(0)) for _ in range(4)])
    spec = make_spec({"sources": {"c": {"kind": "files", "paths": [str(folder / "*.txt")]}}, "tokenizer": tokenizer})
    with pytest.raises(DataError) as error:
        prepare(spec)
    assert error.value.path[:2] == ("data", "tokenizer") and words in str(error.value)


def test_progress_off_a_terminal_is_plain_lines():
    stream = io.StringIO()
    report = terminal_progress(stream, every_s=3600)
    report("tokenizing", 0, 100)
    for done in range(10, 101, 10):
        report("tokenizing", done, 100)
    lines = stream.getvalue().splitlines()
    assert lines == ["tokenizing: 0 of 100 (0%)", "tokenizing: 100 of 100 (100%)"]


def test_progress_on_a_terminal_is_a_redrawn_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    report = terminal_progress(stream)
    report("tokenizing", 50, 100)
    report("tokenizing", 100, 100)
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("100.0%\n") and "[" + "#" * 15 + "." * 15 + "]" in text
