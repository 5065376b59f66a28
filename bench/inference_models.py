"""Trained models for the inference benchmarks (not a benchmark itself: run.py runs bench_*.py only).

`trained(overrides)` trains the quickstart spec with `overrides` (a shorter budget, a smaller model for a
draft) through tabula's own loop, on the quickstart's prepared data (the token cache makes the data free
after the first time), into a folder of the tabula cache kept for the next bench run with the same
overrides, and returns (model in eval mode, spec, prepared data). A run folder given with --run is loaded
instead (its newest checkpoint)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "specs" / "quickstart.yaml"


def trained(overrides: list[str], run_dir: str | None = None):
    """(model, spec, prepared) of `run_dir`, or of the quickstart spec with `overrides` trained now."""
    from tabula.compiler import make_plan
    from tabula.runtime.build import build_local_engine
    from tabula.runtime.checkpoint import CheckpointError, find_checkpoint, load_trained_model
    from tabula.runtime.data import cache_root, prepare
    from tabula.runtime.loop import train
    from tabula.runtime.rundir import RunDir
    from tabula.schemas.loader import load_run_spec, load_spec

    if run_dir is not None:
        checkpoint = find_checkpoint(Path(run_dir))
        spec = load_run_spec(checkpoint.parent.parent)
        return load_trained_model(spec, checkpoint).eval(), spec, prepare(spec)
    spec = load_spec(QUICKSTART, ["train.eval=null", "track.aim.enabled=false", *overrides])
    prepared = prepare(spec)
    folder = cache_root() / "bench-models" / hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]
    try:
        return load_trained_model(spec, find_checkpoint(folder)).eval(), spec, prepared
    except (CheckpointError, OSError, ValueError, RuntimeError):  # not trained yet (or damaged): train again
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    plan = make_plan(spec, vocab_size=prepared.vocab_size, device_type="cpu")
    engine = build_local_engine(spec, plan, torch.device("cpu"))
    outcome = train(spec, plan, engine, RunDir(folder), prepared, spec_hash="bench")
    return load_trained_model(spec, outcome.checkpoint).eval(), spec, prepared
