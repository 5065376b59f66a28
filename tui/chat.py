"""The chat playground (`tabula chat RUN_DIR`): a prompt box, sampling controls, the streamed answer,
tokens/s and the cache's size live, the conversation so far.

The screen knows no model: it talks to a `ChatSession` (the runtime's, runtime/inference/chat.py, built
by `tabula chat` after the screen's app is given it; or a fake in tests), so this module imports no torch.
The session runs in a worker thread; each streamed piece is posted back to the screen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static

from tabula.schemas.units import format_bytes


@dataclass(frozen=True)
class ChatPiece:
    """A streamed piece of an answer: `text` (new characters), `tokens` generated so far in this answer,
    `cache_bytes` the KV cache's bytes now."""

    text: str
    tokens: int
    cache_bytes: int


class StreamedPiece(Protocol):
    """What a session streams: a ChatPiece, or any object with its three fields (the runtime's Reply)."""

    @property
    def text(self) -> str: ...

    @property
    def tokens(self) -> int: ...

    @property
    def cache_bytes(self) -> int: ...


class ChatSession(Protocol):
    """What the screen talks to. `describe()` one line about the model (name, template); `reply(history,
    temperature=, top_p=, max_new_tokens=)` streams the assistant's answer to `history` ((role, text)
    pairs, the last the user's); `cancel()` asks a reply in progress to stop at its next token."""

    def describe(self) -> str: ...

    def reply(self, history: Sequence[tuple[str, str]], *, temperature: float, top_p: float,
              max_new_tokens: int) -> Iterator[StreamedPiece]: ...

    def cancel(self) -> None: ...


class Turn(Static):
    """One message of the conversation."""

    DEFAULT_CSS = """
    Turn { padding: 0 1; margin: 0 0 1 0; }
    Turn.user { color: $text-muted; border-left: thick $primary; }
    Turn.assistant { border-left: thick $success; }
    """

    def __init__(self, role: str, text: str = "") -> None:
        super().__init__(classes=role)
        self.role, self.text = role, text

    def on_mount(self) -> None:
        self.update(Text(self.text))

    def add(self, piece: str) -> None:
        self.text += piece
        self.update(Text(self.text))


class ChatScreen(Screen[None]):
    """The playground. Enter sends the prompt; escape stops an answer; ctrl+l clears the conversation."""

    BINDINGS = [
        Binding("escape", "stop", "stop the answer"),
        Binding("ctrl+l", "clear", "clear the conversation"),
        Binding("ctrl+q", "app.quit", "quit"),
    ]

    DEFAULT_CSS = """
    ChatScreen #history { height: 1fr; border: round $primary-darken-2; padding: 0 1; }
    ChatScreen #controls { height: 3; }
    ChatScreen #controls Label { padding: 1 1 0 1; }
    ChatScreen #controls Input { width: 12; }
    ChatScreen #stats { height: 1; color: $text-muted; padding: 0 1; }
    """

    class Piece(Message):
        """A streamed piece of the answer, from the worker thread."""

        def __init__(self, piece: StreamedPiece) -> None:
            super().__init__()
            self.piece = piece

    class Done(Message):
        """The answer ended: `error` is why it failed, or None."""

        def __init__(self, error: str | None) -> None:
            super().__init__()
            self.error = error

    def __init__(self, session: ChatSession, *, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__()
        self.session, self.clock = session, clock
        self.history: list[tuple[str, str]] = []
        self.answer: Turn | None = None
        self.started = 0.0
        self.busy = False

    def compose(self) -> ComposeResult:
        yield Static(self.session.describe(), id="model")
        yield VerticalScroll(id="history")
        with Horizontal(id="controls"):
            yield Label("temperature")
            yield Input("0.8", id="temperature", restrict=r"[0-9.]*")
            yield Label("top-p")
            yield Input("0.95", id="top_p", restrict=r"[0-9.]*")
            yield Label("max tokens")
            yield Input("128", id="max_tokens", restrict=r"[0-9]*")
        yield Input(placeholder="Say something, then Enter", id="prompt")
        yield Static("", id="stats")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#prompt", Input).focus()

    # ------------------------------------------------------------ sending

    def settings(self) -> dict[str, float | int] | str:
        """The sampling controls' values, or what is wrong with them."""
        try:
            temperature = float(self.query_one("#temperature", Input).value)
            top_p = float(self.query_one("#top_p", Input).value)
            max_new_tokens = int(self.query_one("#max_tokens", Input).value)
        except ValueError:
            return "temperature and top-p are numbers, max tokens a whole number"
        if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
            return "temperature >= 0, top-p in (0, 1], max tokens >= 1"
        return {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}

    @on(Input.Submitted, "#prompt")
    def send(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        if not prompt or self.busy:
            return
        settings = self.settings()
        if isinstance(settings, str):
            self.query_one("#stats", Static).update(Text(settings, style="bold red"))
            return
        event.input.value = ""
        self.history.append(("user", prompt))
        history = self.query_one("#history", VerticalScroll)
        history.mount(Turn("user", prompt))
        self.answer = Turn("assistant")
        history.mount(self.answer)
        history.scroll_end(animate=False)
        self.busy, self.started = True, self.clock()
        self.query_one("#stats", Static).update("thinking...")
        self.stream(list(self.history), settings)

    @work(thread=True, exclusive=True, group="answer")
    def stream(self, history: list[tuple[str, str]], settings: dict) -> None:
        error = None
        try:
            for piece in self.session.reply(history, **settings):
                self.post_message(self.Piece(piece))
        except Exception as failure:  # the session's typed errors, said in the stats line
            error = f"{type(failure).__name__}: {failure}"
        self.post_message(self.Done(error))

    # ------------------------------------------------------------ receiving

    def on_chat_screen_piece(self, message: Piece) -> None:
        piece = message.piece
        if self.answer is not None and piece.text:
            self.answer.add(piece.text)
            self.query_one("#history", VerticalScroll).scroll_end(animate=False)
        elapsed = max(self.clock() - self.started, 1e-9)
        self.query_one("#stats", Static).update(
            f"{piece.tokens} tokens · {piece.tokens / elapsed:.1f} tokens/s · cache {format_bytes(piece.cache_bytes)}")

    def on_chat_screen_done(self, message: Done) -> None:
        self.busy = False
        if self.answer is not None:
            self.history.append(("assistant", self.answer.text))
        if message.error:
            self.query_one("#stats", Static).update(Text(message.error, style="bold red"))

    def action_stop(self) -> None:
        if self.busy:
            self.session.cancel()

    def action_clear(self) -> None:
        if self.busy:
            return
        self.history.clear()
        self.answer = None
        self.query_one("#history", VerticalScroll).remove_children()
        self.query_one("#stats", Static).update("")
