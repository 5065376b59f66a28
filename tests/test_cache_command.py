"""`tabula cache`: the token and compile caches listed with their sizes, and cleared without questions."""

from __future__ import annotations

import json

from tabula.cli import main
from tabula.compiler import compile_cache


def fill(cache):
    """A token cache entry, a half-written one, and the compile caches of this torch and an older one."""
    entry = cache / ("ab" * 16)
    entry.mkdir(parents=True)
    (entry / "meta.json").write_text(json.dumps({"vocab_size": 512, "shards": {"stdlib": {"train": {"tokens": 900}, "val": {"tokens": 100}}}}))
    (entry / "train-stdlib.tokens").write_bytes(b"\0" * 4000)
    (cache / ".tmp-cdcd-999999999-0000").mkdir()  # a prepare that died (no such process)
    (cache / "file-digests.json").write_text("{}")
    inductor = compile_cache.inductor_dir(cache)
    (inductor / "fxgraph").mkdir(parents=True)
    (inductor / "fxgraph" / "graph").write_bytes(b"\0" * 3000)
    compile_cache.record_entry(cache, "k" * 24, name="quickstart", scope="block", mode="default", graphs=6, seconds=31.5)
    old = compile_cache.version_dir(cache, "2.12.0") / "inductor"
    old.mkdir(parents=True)
    (old / "kernel.so").write_bytes(b"\0" * 1000)


def test_cache_lists_both_caches_with_sizes(tabula_cache, capsys):
    fill(tabula_cache)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(tabula_cache) in out
    assert "token cache: 1 entry" in out and "abababababab" in out and "stdlib" in out and "vocabulary 512" in out
    assert f"torch {compile_cache.torch_version()}" in out and "quickstart" in out and "6 graphs in 31.5 s" in out
    assert "torch 2.12.0" in out and "another torch" in out
    assert main(["cache", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tokens"]["entries"][0]["tokens"] == 1000 and data["tokens"]["size"] >= 4000
    current, old = data["compile"]["versions"]
    assert current["current"] and current["models"][0]["name"] == "quickstart" and current["size"] >= 3000
    assert not old["current"] and old["size"] == 1000


def test_clear_compile_keeps_the_tokens_and_says_what_went(tabula_cache, capsys):
    fill(tabula_cache)
    assert main(["cache", "clear", "--compile"]) == 0
    out = capsys.readouterr().out
    assert "removed the compile cache of 2 torch versions" in out
    assert not (tabula_cache / "compile").exists() and (tabula_cache / ("ab" * 16)).is_dir()


def test_clear_tokens_keeps_the_compile_cache(tabula_cache, capsys):
    fill(tabula_cache)
    assert main(["cache", "clear", "--tokens"]) == 0
    assert "removed 1 token cache entry" in capsys.readouterr().out
    assert not (tabula_cache / ("ab" * 16)).exists() and not (tabula_cache / ".tmp-cdcd-999999999-0000").exists()
    assert compile_cache.is_warm(tabula_cache, "k" * 24)


def test_clear_removes_both_and_an_empty_cache_is_fine(tabula_cache, capsys):
    fill(tabula_cache)
    assert main(["cache", "clear"]) == 0
    assert "removed 1 token cache entry" in capsys.readouterr().out
    assert not (tabula_cache / "compile").exists() and not (tabula_cache / ("ab" * 16)).exists()
    assert main(["cache", "clear"]) == 0
    assert "removed 0 token cache entries" in capsys.readouterr().out
    assert main(["cache"]) == 0
    assert "empty" in capsys.readouterr().out


def test_a_filter_without_clear_is_bad_input(tabula_cache, capsys):
    assert main(["cache", "--compile"]) == 2
    assert "go with `clear`" in capsys.readouterr().err
