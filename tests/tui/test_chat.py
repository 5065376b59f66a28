"""The chat playground (tui/chat.py) driven by a Pilot: a prompt is sent, the answer streams in piece by
piece with tokens/s and the cache's size, the conversation is kept for the next turn, the sampling
controls reach the session, and a failing session is said in one line."""

from __future__ import annotations

import threading

import pytest

from tabula.tui.app import ChatApp
from tabula.tui.chat import ChatPiece, Turn

pytestmark = pytest.mark.anyio


class FakeSession:
    """Streams a fixed answer a word at a time; records what it was asked."""

    def __init__(self, answer: str = "hello there, friend", fail: str | None = None) -> None:
        self.answer, self.fail = answer, fail
        self.asked: list[tuple[list[tuple[str, str]], dict]] = []
        self.release = threading.Event()
        self.release.set()

    def describe(self) -> str:
        return "fake model · template chatml"

    def reply(self, history, **settings):
        self.asked.append((list(history), settings))
        if self.fail:
            raise ValueError(self.fail)
        for i, word in enumerate(self.answer.split(" ")):
            if i:
                self.release.wait(5)
            yield ChatPiece(("" if i == 0 else " ") + word, tokens=i + 1, cache_bytes=1024 * (i + 1))

    def cancel(self) -> None:
        pass


def text_of(app) -> list[tuple[str, str]]:
    return [(turn.role, turn.text) for turn in app.screen.query(Turn)]


async def send(pilot, prompt: str) -> None:
    await pilot.click("#prompt")
    for key in prompt:
        await pilot.press(key if key != " " else "space")
    await pilot.press("enter")
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def test_an_answer_streams_in_and_the_conversation_carries_on():
    session = FakeSession()
    app = ChatApp(session)
    async with app.run_test(size=(80, 24)) as pilot:
        assert "fake model" in str(app.screen.query_one("#model").render())
        session.release.clear()  # hold the stream after its first piece
        await pilot.click("#prompt")
        for key in "hi":
            await pilot.press(key)
        await pilot.press("enter")
        for _ in range(100):  # until the first piece has arrived
            await pilot.pause(0.05)
            if text_of(app)[-1][1]:
                break
        assert text_of(app) == [("user", "hi"), ("assistant", "hello")]  # the first piece is shown before the rest
        session.release.set()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert text_of(app) == [("user", "hi"), ("assistant", "hello there, friend")]
        stats = str(app.screen.query_one("#stats").render())
        assert "3 tokens" in stats and "tokens/s" in stats and "cache 3.0 KiB" in stats
        await send(pilot, "again")
        history, settings = session.asked[-1]
        assert history == [("user", "hi"), ("assistant", "hello there, friend"), ("user", "again")]
        assert settings == {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 128}


async def test_the_controls_reach_the_session_and_bad_values_are_refused():
    session = FakeSession()
    app = ChatApp(session)
    async with app.run_test(size=(80, 24)) as pilot:
        app.screen.query_one("#temperature").value = "0"
        app.screen.query_one("#max_tokens").value = "5"
        await send(pilot, "x")
        assert session.asked[-1][1] == {"temperature": 0.0, "top_p": 0.95, "max_new_tokens": 5}
        app.screen.query_one("#top_p").value = "2"
        await send(pilot, "y")
        assert len(session.asked) == 1
        assert "top-p in (0, 1]" in str(app.screen.query_one("#stats").render())


async def test_a_failing_session_is_said_in_one_line():
    app = ChatApp(FakeSession(fail="the prompt is longer than the model's context"))
    async with app.run_test(size=(80, 24)) as pilot:
        await send(pilot, "long")
        assert "ValueError: the prompt is longer than the model's context" in str(app.screen.query_one("#stats").render())
        assert app.screen.busy is False
