"""`tabula chat`'s session (runtime/inference/chat.py) over a real tiny model: the playground (tui/chat.py)
driven by a Pilot streams its answer with tokens/s and the cache's size; a templated model is prompted
through its chat template and stops at its end-of-turn token."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models

from chain_models import train_tiny
from runtime_helpers import one_thread_fixture
from tabula.runtime.data.chat_template import TEMPLATES
from tabula.runtime.inference import Generator
from tabula.runtime.inference.chat import ChatSession

one_thread = one_thread_fixture()

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"  # 62 characters, then ChatML's 2 tokens


def char_tokenizer() -> Tokenizer:
    """One token a character, 64 in all (the chain model's vocabulary), ChatML's two special tokens last."""
    vocab = {c: i for i, c in enumerate(CHARS)} | {"<|im_start|>": 62, "<|im_end|>": 63}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return tokenizer


@pytest.fixture(scope="module")
def generator():
    return Generator(train_tiny(), char_tokenizer())


@pytest.mark.anyio
async def test_the_playground_streams_a_real_models_answer(generator):
    from tabula.tui.app import ChatApp
    from tabula.tui.chat import Turn

    session = ChatSession(generator, None, name="tiny")
    app = ChatApp(session)
    async with app.run_test(size=(100, 30)) as pilot:
        assert "tiny" in str(app.screen.query_one("#model").render())
        app.screen.query_one("#temperature").value = "0"
        app.screen.query_one("#max_tokens").value = "12"
        await pilot.click("#prompt")
        for key in "abc":
            await pilot.press(key)
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        turns = [(turn.role, turn.text) for turn in app.screen.query(Turn)]
        expected = generator.generate("abc", max_new_tokens=12)
        assert turns == [("user", "abc"), ("assistant", expected.text)] and len(expected.token_ids) == 12
        stats = str(app.screen.query_one("#stats").render())
        assert "12 tokens" in stats and "tokens/s" in stats and "cache" in stats and "cache 0 B" not in stats
        assert session.generator.decoder is generator.decoder


def test_a_templated_model_is_prompted_through_its_template_and_stops_at_its_end_of_turn(generator):
    session = ChatSession(generator, TEMPLATES["chatml"](), name="tiny")
    history = [("user", "ab"), ("assistant", "cd"), ("user", "ef")]
    assert session.prompt(history) == ("<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\ncd<|im_end|>\n"
                                       "<|im_start|>user\nef<|im_end|>\n<|im_start|>assistant\n")
    assert set(session.stop_ids) == {62, 63}
    pieces = list(session.reply([("user", "ab")], temperature=0.0, top_p=1.0, max_new_tokens=30))
    expected = generator.generate(session.prompt([("user", "ab")]), max_new_tokens=30, stop_token_ids=(62, 63))
    assert "".join(piece.text for piece in pieces) == expected.text
    assert pieces[-1].tokens == len(expected.token_ids) and all(piece.cache_bytes > 0 for piece in pieces)
