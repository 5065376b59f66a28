"""The inspection screen (`tabula inspect RUN_DIR --prompt TEXT` in a terminal): three views of one text
through a trained model, switched with 1 2 3 (or tab):
- attention: the weights of one layer and head as a coloured grid, a row a query token, a column the token
  it attends to (dark: none, yellow: all); h/l (or left/right) change the head, j/k (or down/up) the layer;
- token loss: the text with each token shaded by its loss given the ones before it (red: a surprise), and
  the most surprising tokens;
- logit lens: the top next-token guesses after each layer at one position (, and . move it), the actual
  next token in bold where a layer guessed it.

The screen knows no model: it is given an `InspectData` of plain numbers and strings (the command converts
the runtime's Inspection, runtime/evaluation/interpret.py), so this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Footer, Static

VIEWS = ("attention", "loss", "lens")
# viridis at five stops: the colour scale of the PNG heatmaps too
VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
LABEL = 10  # characters of a token's label


@dataclass(frozen=True)
class InspectData:
    """What the screen shows. `attention[layer][head][query][key]` (rows summing to 1; more keys than tokens
    when the model prepends virtual tokens: the last len(tokens) are the text's); `token_loss[i]` nats, None
    for the first token; `lens[layer][position]` the top (token, probability) guesses of the next token."""

    title: str
    tokens: Sequence[str]
    attention: Sequence[Sequence[Sequence[Sequence[float]]]]
    token_loss: Sequence[float | None]
    lens: Sequence[Sequence[Sequence[tuple[str, float]]]]
    note: str = ""  # a line under the title (where the PNGs went)


def shade(weight: float) -> str:
    """The viridis colour of `weight` in [0, 1] (clamped), as a rich colour."""
    x = min(1.0, max(0.0, weight)) * (len(VIRIDIS) - 1)
    i = min(int(x), len(VIRIDIS) - 2)
    f = x - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(VIRIDIS[i], VIRIDIS[i + 1]))
    return f"rgb({r},{g},{b})"


def surprise(loss: float, top: float) -> str:
    """White (no surprise) to red (the text's largest loss) for a token's loss."""
    x = 0.0 if top <= 0 else min(1.0, max(0.0, loss / top))
    return f"rgb(255,{round(255 * (1 - x))},{round(255 * (1 - x))})"


def label(token: str, width: int = LABEL) -> str:
    """A token readable on one line: newlines and tabs shown, cut to `width`."""
    shown = token.replace("\n", "↵").replace("\t", "→").replace("\r", "␍")
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def heatmap(matrix: Sequence[Sequence[float]], tokens: Sequence[str]) -> Text:
    """One head's attention as a grid two characters a cell, the query tokens down the left, the key
    positions (numbered as the rows) across the top, and the colour scale under it."""
    n = len(tokens)
    rows = [list(row)[-n:] for row in matrix]
    text = Text(" " * (LABEL + 5) + "".join(f"{j % 100:>2}" for j in range(n)) + "\n", style="dim")
    for i, row in enumerate(rows):
        text.append(f"{i:>3} {label(tokens[i]):<{LABEL}} ")
        for weight in row:
            text.append("  ", style=f"on {shade(weight)}")
        text.append("\n")
    text.append("\n" + " " * (LABEL + 5) + "0 ", style="dim")
    for step in range(11):
        text.append(" ", style=f"on {shade(step / 10)}")
    text.append(" 1   (query attends to key)", style="dim")
    return text


def loss_text(tokens: Sequence[str], losses: Sequence[float | None]) -> Text:
    """The text, each token on the colour of its loss; its mean and most surprising tokens below."""
    known = [loss for loss in losses if loss is not None]
    top = max(known, default=0.0)
    text = Text()
    for token, loss in zip(tokens, losses):
        shown = token.replace("\n", "↵\n").replace("\t", "→")
        if loss is None:
            text.append(shown, style="dim")
        else:
            text.append(shown, style=f"black on {surprise(loss, top)}")
    text.append("\n\n")
    if known:
        text.append(f"mean loss {sum(known) / len(known):.3f} nats over {len(known)} tokens; the most surprising:\n")
        ranked = sorted((loss, i) for i, loss in enumerate(losses) if loss is not None)[::-1][:5]
        for loss, i in ranked:
            text.append(f"  {i:>3} {label(tokens[i], 20):<20} {loss:7.3f}\n", style=f"black on {surprise(loss, top)}")
    text.append("\nwhite: expected … red: a surprise (the largest loss of the text)", style="dim")
    return text


def lens_table(data: InspectData, position: int) -> Group:
    """Each layer's top guesses for the token after `position`; the actual next token in bold green."""
    tokens = data.tokens
    actual = tokens[position + 1] if position + 1 < len(tokens) else None
    after = f"after {position} {label(tokens[position], 20)!r}"
    title = f"{after}: the next token is {label(actual, 20)!r}" if actual is not None else f"{after} (the last token)"
    table = Table(box=None, pad_edge=False)
    table.add_column("layer", justify="right")
    width = max((len(layer[position]) for layer in data.lens), default=0)
    for k in range(width):
        table.add_column(f"guess {k + 1}")
    for layer, positions in enumerate(data.lens):
        cells = []
        for token, p in positions[position]:
            cell = Text(f"{label(token, 14)!r} {p:.2f}")
            if token == actual:
                cell.stylize("bold green")
            cells.append(cell)
        table.add_row(str(layer), *cells)
    return Group(Text(title + "\n", style="bold"), table)


class View(ScrollableContainer, can_focus=False):
    """A view that scrolls with the mouse but never takes the keys (they choose layer, head, position)."""


class InspectScreen(Screen[None]):
    BINDINGS = [
        Binding("1", "view('attention')", "attention"),
        Binding("2", "view('loss')", "token loss"),
        Binding("3", "view('lens')", "logit lens"),
        Binding("tab", "next_view", "next view", show=False),
        Binding("l,right", "head(1)", "next head"),
        Binding("h,left", "head(-1)", "previous head", show=False),
        Binding("j,down", "layer(1)", "next layer"),
        Binding("k,up", "layer(-1)", "previous layer", show=False),
        Binding("full_stop", "position(1)", "next position"),
        Binding("comma", "position(-1)", "previous position", show=False),
        Binding("q,escape", "app.quit", "quit"),
    ]

    DEFAULT_CSS = """
    InspectScreen #where { height: auto; padding: 0 1; background: $boost; }
    InspectScreen View { height: 1fr; padding: 0 1; }
    InspectScreen View Static { width: auto; }
    """

    def __init__(self, data: InspectData) -> None:
        super().__init__()
        self.data = data
        self.layer_index, self.head_index = 0, 0
        self.lens_position = max(0, len(data.tokens) - 1)
        self.shown_view = "attention"

    def compose(self) -> ComposeResult:
        yield Static(id="where")
        with ContentSwitcher(initial="attention"):
            for name in VIEWS:
                with View(id=name):
                    yield Static(id=f"{name}-body")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#loss-body", Static).update(loss_text(self.data.tokens, self.data.token_loss))
        self.refresh_views()

    @property
    def layer_count(self) -> int:
        return len(self.data.attention)

    @property
    def head_count(self) -> int:
        return len(self.data.attention[self.layer_index]) if self.layer_count else 0

    def refresh_views(self) -> None:
        data = self.data
        head_line = f"layer {self.layer_index + 1}/{self.layer_count} · head {self.head_index + 1}/{self.head_count}" if self.layer_count else "no attention layers"
        where = Text(f"{data.title}  ", style="bold")
        where.append(f"{len(data.tokens)} tokens · {head_line} · lens position {self.lens_position}")
        if data.note:
            where.append(f"\n{data.note}", style="dim")
        self.query_one("#where", Static).update(where)
        if self.layer_count:
            self.query_one("#attention-body", Static).update(heatmap(data.attention[self.layer_index][self.head_index], data.tokens))
        if data.lens:
            self.query_one("#lens-body", Static).update(lens_table(data, self.lens_position))

    def action_view(self, name: str) -> None:
        self.shown_view = name
        self.query_one(ContentSwitcher).current = name

    def action_next_view(self) -> None:
        self.action_view(VIEWS[(VIEWS.index(self.shown_view) + 1) % len(VIEWS)])

    def action_head(self, delta: int) -> None:
        if self.head_count:
            self.head_index = (self.head_index + delta) % self.head_count
            self.refresh_views()

    def action_layer(self, delta: int) -> None:
        if self.layer_count:
            self.layer_index = (self.layer_index + delta) % self.layer_count
            self.head_index = min(self.head_index, self.head_count - 1)
            self.refresh_views()

    def action_position(self, delta: int) -> None:
        self.lens_position = min(max(0, self.lens_position + delta), max(0, len(self.data.tokens) - 1))
        self.refresh_views()
