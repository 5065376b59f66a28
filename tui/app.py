"""The Textual apps: the run dashboard (`tabula watch`, `tabula run` in a terminal), the spec wizard, the
chat playground and the inspection screen (`tabula inspect`).

Thin on purpose: each app pushes its one screen and returns what the screen answered.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from textual.app import App
from textual.screen import Screen

from .chat import ChatScreen, ChatSession
from .dashboard import DashboardScreen, Process
from .inspect import InspectData, InspectScreen


class DashboardApp(App[str | None]):
    """Watches `run_dir`. With `process` (the training it started), `q` asks whether to stop the run
    or leave it running, and the app returns `"stop"` or `"leave"`; otherwise it returns None."""

    TITLE = "tabula"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, run_dir: str | Path, *, clock: Callable[[], float] = time.time,
                 process: Process | None = None, output_log: Path | None = None) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.clock = clock
        self.process = process
        self.output_log = output_log

    def on_mount(self) -> None:
        screen = DashboardScreen(self.run_dir, clock=self.clock, process=self.process, output_log=self.output_log)
        self.push_screen(screen, self.exit)


class WizardApp(App["Path | None"]):
    """The spec wizard (`tabula new`): returns the path it saved last, or None."""

    TITLE = "tabula new"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, screen_factory: Callable[[], Screen]) -> None:
        super().__init__()
        self._screen_factory = screen_factory
        self.wizard: Screen | None = None

    def on_mount(self) -> None:
        self.wizard = self._screen_factory()
        self.push_screen(self.wizard, self.exit)

    async def action_quit(self) -> None:
        """ctrl+q: leave, returning what was saved."""
        self.exit(getattr(self.wizard, "saved", None))


class ChatApp(App[None]):
    """The chat playground (`tabula chat`) over `session` (tui/chat.py ChatSession)."""

    TITLE = "tabula chat"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, session: ChatSession) -> None:
        super().__init__()
        self.session = session

    def on_mount(self) -> None:
        self.push_screen(ChatScreen(self.session))


class InspectApp(App[None]):
    """Attention, per-token loss and the logit lens of one text (`tabula inspect`), from plain data."""

    TITLE = "tabula inspect"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, data: InspectData) -> None:
        super().__init__()
        self.data = data

    def on_mount(self) -> None:
        self.push_screen(InspectScreen(self.data))
