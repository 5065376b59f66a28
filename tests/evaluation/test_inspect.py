"""tabula inspect: attention recomputed equals what the model's attention computes (GQA, a sliding window,
MLA), rows sum to one and respect causality; PNGs written and non-empty; per-token loss is the model's."""

from __future__ import annotations

import math

import pytest
import torch

from tabula.cli import main


@pytest.mark.parametrize("attention", [
    "{kind: gqa, n_heads: 4, n_kv_heads: 2}",
    "{kind: gqa, n_heads: 4, n_kv_heads: 2, window: 4}",
    "{kind: mla, n_heads: 4, kv_latent: 16, rope_head_dim: 8}",
])
def test_recomputed_weights_reproduce_the_attention_output(attention):
    """The weights times the values give back the attention's own output (so they are the weights it used)."""
    from tabula.compiler import build_model
    from tabula.compiler.blocks import attention as attention_module
    from tabula.runtime.evaluation.interpret import attention_weights, recording_attention
    from ruamel.yaml import YAML

    from tabula.schemas.spec import Spec
    from tiny_specs import QUICKSTART

    data = YAML(typ="safe").load(QUICKSTART.read_text())
    data["model"].update(d_model=64, n_layers=2)
    data["model"]["block"]["attention"] = YAML(typ="safe").load(attention)
    spec = Spec.model_validate(data)
    model = build_model(spec, vocab_size=64)
    model.materialize("cpu", 0)
    ids = torch.randint(0, 64, (1, 12))
    checks = []
    original = attention_module.attend

    def check(q, k, v, mask, dropout):  # runs inside the recording wrapper, on the same q, k, v
        out = original(q, k, v, mask, dropout)
        weights = attention_weights(q, k, mask)
        shared = v.repeat_interleave(q.size(1) // v.size(1), dim=1) if v.size(1) != q.size(1) else v
        checks.append(torch.allclose(weights @ shared.float(), out.float(), atol=1e-5))
        return out

    attention_module.attend = check
    try:
        with recording_attention() as recorded, torch.no_grad():
            model(ids)
    finally:
        attention_module.attend = original
    assert checks and all(checks) and len(recorded) == 2
    for weights in recorded:  # (1, nh, T, T)
        assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5)
        assert float(weights[0].triu(1).abs().sum()) == 0.0  # causal
    if "window" in attention:
        assert float(recorded[0][0, :, 8, :5].abs().sum()) == 0.0  # token 8 sees tokens 5..8 only


def test_tabula_inspect_writes_heatmaps_loss_and_lens(tiny_run, tmp_path, capsys):
    out = tmp_path / "inspect"
    assert main(["inspect", str(tiny_run), "--prompt", "import os\nimport sys", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["attention-layer-00.png", "attention-layer-01.png", "token-loss.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 5_000 for p in pngs)
    assert "per-token loss" in printed and "layer  1:" in printed
    losses = [float(line.split()[-1]) for line in printed.splitlines()[2:] if line.startswith("  '") and line.split()[-1] != "-"]
    assert losses and all(0 <= loss < 3 * math.log(512) for loss in losses)


def test_tabula_inspect_in_a_terminal_opens_the_screen_with_plain_data(tiny_run, tmp_path, monkeypatch, capsys):
    from tabula.tui.app import InspectApp

    shown = []
    monkeypatch.setattr(InspectApp, "run", lambda app: shown.append(app.data))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(["inspect", str(tiny_run), "--prompt", "import os", "--out", str(tmp_path / "out")]) == 0
    assert "per-token loss" not in capsys.readouterr().out  # the screen showed it, not the terminal
    (data,) = shown
    assert data.token_loss[0] is None and len(data.token_loss) == len(data.tokens) >= 3
    assert len(data.attention) == len(data.lens) == 2  # the tiny model's two layers
    head = data.attention[0][0]
    assert isinstance(head, list) and isinstance(head[0][0], float)  # plain numbers: the screen needs no torch
    assert all(abs(sum(row) - 1) < 1e-4 for row in head)
    assert "PNGs in" in data.note and sorted(p.name for p in (tmp_path / "out").iterdir())[0] == "attention-layer-00.png"
