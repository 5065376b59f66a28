"""The inspection screen (tui/inspect.py) driven by a Pilot on tiny plain data (2 layers, 2 heads, 4
tokens): the heatmap of the chosen layer and head, keys that change them, the token-loss view naming the
most surprising token, the logit lens at a chosen position marking the actual next token; no torch."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from rich.console import Console
from textual.visual import RichVisual

from tabula.tui.app import InspectApp
from tabula.tui.inspect import InspectData, heatmap, shade

pytestmark = pytest.mark.anyio

TOKENS = ["<|endoftext|>", "import", " os", "\n"]


def causal(hot: int) -> list[list[float]]:
    """Each query puts all its weight on key min(hot, query)."""
    return [[1.0 if j == min(hot, i) else 0.0 for j in range(4)] for i in range(4)]


DATA = InspectData(
    title="tiny-run",
    tokens=TOKENS,
    attention=[[causal(0), causal(1)], [causal(2), causal(3)]],
    token_loss=[None, 2.0, 7.5, 1.0],
    lens=[[[("x", 0.5), ("y", 0.2)]] * 4, [[("import", 0.4), (" os", 0.3)], [(" os", 0.6), (" sys", 0.1)],
                                            [("\n", 0.9), (" ", 0.05)], [("import", 0.3), ("def", 0.2)]]],
    note="5 PNGs in /tmp/inspect",
)


def body(app, name: str) -> str:
    """What the view shows, as plain text (a rich Table rendered through a console)."""
    shown = app.screen.query_one(f"#{name}-body").render()
    if isinstance(shown, RichVisual):
        console = Console(width=100, file=io.StringIO(), record=True)
        console.print(shown._renderable)
        return console.export_text()
    return str(shown)


def test_the_heatmap_colours_each_cell_by_its_weight():
    text = heatmap(causal(1), TOKENS)
    cells = [span for span in text.spans if str(span.style).startswith("on rgb")][:16]  # the grid, not the scale
    assert str(cells[0].style) == f"on {shade(1.0)}"  # query 0 attends to key 0
    assert str(cells[4 + 1].style) == f"on {shade(1.0)}" and str(cells[4].style) == f"on {shade(0.0)}"
    assert "import" in text.plain and "↵" in text.plain


async def test_keys_choose_the_layer_and_head_of_the_heatmap():
    app = InspectApp(DATA)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        where = str(screen.query_one("#where").render())
        assert "tiny-run" in where and "layer 1/2 · head 1/2" in where and "5 PNGs" in where
        assert screen.query_one("#attention-body").render().plain == heatmap(causal(0), TOKENS).plain
        shown = []
        for key in ("l", "j", "h", "l", "l", "k"):
            await pilot.press(key)
            shown.append((screen.layer_index, screen.head_index))
        assert shown == [(0, 1), (1, 1), (1, 0), (1, 1), (1, 0), (0, 0)]
        await pilot.press("j", "right")
        assert (screen.layer_index, screen.head_index) == (1, 1)
        assert "layer 2/2 · head 2/2" in str(screen.query_one("#where").render())
        rendered = screen.query_one("#attention-body").render()
        assert [str(s.style) for s in rendered.spans if str(s.style).startswith("on rgb")][:16] == \
               [str(s.style) for s in heatmap(causal(3), TOKENS).spans if str(s.style).startswith("on rgb")][:16]


async def test_the_token_loss_view_and_the_logit_lens():
    app = InspectApp(DATA)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await pilot.press("2")
        assert screen.shown_view == "loss" and screen.query_one("ContentSwitcher").current == "loss"
        loss = body(app, "loss")
        assert "mean loss 3.500 nats over 3 tokens" in loss
        assert loss.index(" os") < loss.index("import", loss.index("most surprising"))  # 7.5 ranks first
        await pilot.press("3")
        assert screen.query_one("ContentSwitcher").current == "lens"
        assert screen.lens_position == 3 and "the last token" in body(app, "lens")
        await pilot.press("comma", "comma")
        lens = body(app, "lens")
        assert screen.lens_position == 1 and "the next token is ' os'" in lens and "' sys' 0.10" in lens
        assert [line.split()[0] for line in lens.splitlines()[3:5]] == ["0", "1"]  # a row a layer
        await pilot.press("tab")
        assert screen.shown_view == "attention"
        await pilot.press("q")
    assert app.return_value is None


def test_the_inspection_screen_imports_no_torch():
    code = ("import sys, tabula.tui.app, tabula.tui.inspect, tabula.commands.inspect; "
            "bad = [m for m in ('torch', 'deepspeed', 'aim', 'datasets') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
