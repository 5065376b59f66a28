"""Supervised data through prepare and the sampler: chat and instruction records become tokens with
a loss mask on the assistant's tokens, bad records are reported by file and line, conversations are
cut to max_tokens on the declared side, packed conversations get their own document ids, and the
model's loss ignores what the mask leaves out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_helpers import Stage, make_spec

from tabula.runtime.data import DataError, Sampler, prepare, validation_batches

CHATS = [
    [{"role": "system", "content": "Add numbers."}, {"role": "user", "content": "What is 2 + 3?"},
     {"role": "assistant", "content": "2 + 3 = 5."}],
    [{"role": "user", "content": "What is 4 + 4?"}, {"role": "assistant", "content": "8."},
     {"role": "user", "content": "And doubled?"}, {"role": "assistant", "content": "16."}],
] + [
    [{"role": "user", "content": f"What is {a} + {a + 1}?"}, {"role": "assistant", "content": f"{a} + {a + 1} = {2 * a + 1}."}]
    for a in range(10, 40)
]


def write_chats(path, chats=CHATS, extra_lines=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"messages": chat}) for chat in chats]
    path.write_text("\n".join([*lines[:2], *extra_lines, *lines[2:]]) + "\n")
    return path


def chat_spec(path, records=None, chat=None, **source):
    return make_spec({
        "sources": {"chat": {"kind": "files", "paths": [str(path)], "format": source.pop("format", "jsonl"),
                             "records": records or {"kind": "chat"}, **source}},
        "packing": {"document_masking": True},
        "validation": {"fraction": 0},
        "chat": chat or {"template": "chatml"},
    })


def documents(shard):
    """Each document's (token ids, loss mask)."""
    tokens, mask, ends = np.asarray(shard.tokens), np.asarray(shard.loss_mask), np.asarray(shard.document_ends)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return [(tokens[a:b].tolist(), mask[a:b].tolist()) for a, b in zip(starts, ends.astype(np.int64))]


def pieces(tokenizer, ids, mask):
    """The document decoded as runs of (trained, text)."""
    runs, start = [], 0
    for index in range(1, len(ids) + 1):
        if index == len(ids) or mask[index] != mask[start]:
            runs.append((bool(mask[start]), tokenizer.decode(ids[start:index], skip_special_tokens=False)))
            start = index
    return runs


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return prepare(chat_spec(write_chats(root / "chat.jsonl")), cache_dir=root / "cache")


def test_chat_records_train_on_the_assistants_tokens_only(chat_data):
    tokenizer = chat_data.tokenizer
    first, second = documents(chat_data.train["chat"])[:2]
    assert pieces(tokenizer, *first) == [
        (False, "<|im_start|>system\nAdd numbers.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"),
        (True, "2 + 3 = 5.<|im_end|>"),
        (False, "\n<|endoftext|>"),
    ]
    assert [text for trained, text in pieces(tokenizer, *second) if trained] == ["8.<|im_end|>", "16.<|im_end|>"]
    # <|im_start|> and <|im_end|> were trained into the tokenizer as single special tokens, within vocab_size 300.
    assert tokenizer.get_vocab_size() == 300 and tokenizer.token_to_id("<|im_start|>") is not None
    shard = chat_data.train["chat"]
    assert shard.n_trained == int(np.asarray(shard.loss_mask).sum()) < shard.n_tokens


def test_instruction_records_become_a_conversation(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ] * 4) + "\n")
    records = {"kind": "instruction", "prompt_field": "instruction", "input_field": "input", "response_field": "output",
               "system": "You help."}
    prepared = prepare(chat_spec(path, records=records, chat={"template": "llama-3"}), cache_dir=tmp_path / "cache")
    first, second = documents(prepared.train["chat"])[:2]
    assert pieces(prepared.tokenizer, *first) == [
        (False, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou help.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nTranslate to French.\n\ncat<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        (True, "chat<|eot_id|>"),
        (False, "<|endoftext|>"),
    ]
    assert "Say hi.<|eot_id|>" in prepared.tokenizer.decode(second[0], skip_special_tokens=False)  # an empty input adds nothing


def test_a_loaded_tokenizer_gets_the_templates_special_tokens(tmp_path, chat_data):
    from tabula.runtime.data import save_tokenizer

    file = save_tokenizer(chat_data, tmp_path / "tokenizer.json")  # has chatml's tokens, not llama-3's
    spec = make_spec({"tokenizer": {"kind": "file", "path": str(file)},
                      "sources": {"chat": {"kind": "files", "paths": [str(write_chats(tmp_path / "c.jsonl"))], "format": "jsonl",
                                           "records": {"kind": "chat"}}},
                      "packing": {"document_masking": True}, "validation": {"fraction": 0}, "chat": {"template": "llama-3"}})
    prepared = prepare(spec, cache_dir=tmp_path / "cache")
    added = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert prepared.report["chat"]["added_tokens"] == added
    assert prepared.vocab_size == 300 + 4
    assert prepared.tokenizer.encode("<|eot_id|>", add_special_tokens=False).ids == [prepared.tokenizer.token_to_id("<|eot_id|>")]


def test_the_tokenizers_own_template_from_tokenizer_config(tmp_path, chat_data):
    from tabula.runtime.data import save_tokenizer
    from test_data_chat_template import CHATML_JINJA

    folder = tmp_path / "imported"
    folder.mkdir()
    save_tokenizer(chat_data, folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML_JINJA, "eos_token": "<|im_end|>"}))
    spec = make_spec({"tokenizer": {"kind": "file", "path": str(folder / "tokenizer.json")},
                      "sources": {"chat": {"kind": "files", "paths": [str(write_chats(tmp_path / "c.jsonl"))], "format": "jsonl",
                                           "records": {"kind": "chat"}}},
                      "packing": {"document_masking": True}, "validation": {"fraction": 0}})  # template: auto
    prepared = prepare(spec, cache_dir=tmp_path / "cache")
    assert prepared.report["chat"]["template"] == "tokenizer" and "tokenizer_config.json" in prepared.report["chat"]["template_from"]
    # The same text as tabula's chatml: the same tokens and the same mask.
    assert documents(prepared.train["chat"]) == documents(chat_data.train["chat"])
    # Editing the template changes the data fingerprint.
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML_JINJA.replace("'\\n'}}", "'\\n\\n'}}")}))
    assert prepare(spec, cache_dir=tmp_path / "cache").fingerprint != prepared.fingerprint


BAD_LINES = [
    "not json",
    json.dumps({"conversation": []}),
    json.dumps({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
    json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}),
    json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
    json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}),
]


def test_bad_records_are_skipped_and_reported_with_file_and_line(tmp_path):
    path = write_chats(tmp_path / "chat.jsonl", extra_lines=BAD_LINES)
    prepared = prepare(chat_spec(path, on_error="skip"), cache_dir=tmp_path / "cache")
    skipped = prepared.report["sources"]["chat"]["skipped"]
    assert skipped["count"] == 6 and len(skipped["first"]) == 5
    assert skipped["first"] == [
        f"{path}:3: not valid JSON (Expecting value: line 1 column 1 (char 0))",
        f"{path}:4: no field 'messages' (found: conversation)",
        f"{path}:5: messages[0] has role 'bot', not one of system, user, assistant (map the file's role names with records.roles)",
        f"{path}:6: messages[0].content is a number, not text",
        f"{path}:7: no assistant message to train on",
    ]
    assert sum(f"{path}:" in warning for warning in prepared.report["warnings"]) == 6
    assert prepared.train["chat"].n_documents == len(CHATS)


def test_a_bad_record_refuses_prepare_by_default(tmp_path):
    path = write_chats(tmp_path / "chat.jsonl", extra_lines=BAD_LINES[2:3])
    with pytest.raises(DataError) as raised:
        prepare(chat_spec(path), cache_dir=tmp_path / "cache")
    assert f"{path}:3: messages[0] has role 'bot'" in str(raised.value) and "on_error: skip" in str(raised.value)
    assert raised.value.path == ("data", "sources", "chat", "records")


def test_role_names_are_mapped(tmp_path):
    path = tmp_path / "sharegpt.jsonl"
    path.write_text("\n".join(json.dumps({"conversations": [{"from": "human", "value": f"hi, what is {i} times {i}?"},
                                                             {"from": "gpt", "value": f"hello, it is {i * i}"}]})
                              for i in range(40)) + "\n")
    records = {"kind": "chat", "messages_field": "conversations", "role_field": "from", "content_field": "value",
               "roles": {"human": "user", "gpt": "assistant"}}
    prepared = prepare(chat_spec(path, records=records), cache_dir=tmp_path / "cache")
    ids, mask = documents(prepared.train["chat"])[0]
    assert [t for trained, t in pieces(prepared.tokenizer, ids, mask) if trained] == ["hello, it is 0<|im_end|>"]


def test_parquet_records_and_their_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"question {i}: what is {i} squared?", "response": f"{i} squared is {i * i}." if i != 3 else None}
            for i in range(40)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "sft.parquet")
    spec = chat_spec(tmp_path / "sft.parquet", records={"kind": "instruction"}, format="parquet", on_error="skip")
    prepared = prepare(spec, cache_dir=tmp_path / "cache")
    assert prepared.train["chat"].n_documents == 39
    assert prepared.report["sources"]["chat"]["skipped"]["first"] == [f"{tmp_path / 'sft.parquet'}: row 4: field 'response' is null"]
    # A column the records name that the file lacks is a spec mistake: refused whatever on_error says.
    with pytest.raises(DataError, match="no column 'answer'") as raised:
        prepare(chat_spec(tmp_path / "sft.parquet", records={"kind": "instruction", "response_field": "answer"}, format="parquet",
                          on_error="skip"), cache_dir=tmp_path / "cache")
    assert raised.value.path == ("data", "sources", "chat", "records")


@pytest.mark.parametrize("side", ["right", "left"])
def test_max_tokens_cuts_on_the_declared_side(tmp_path, chat_data, side):
    path = write_chats(tmp_path / "chat.jsonl")
    whole = documents(chat_data.train["chat"])
    prepared = prepare(chat_spec(path, chat={"template": "chatml", "max_tokens": 24, "truncation": side}), cache_dir=tmp_path / "cache")
    assert prepared.tokenizer_hash == chat_data.tokenizer_hash  # the same tokenizer: the documents compare token for token
    cut = documents(prepared.train["chat"])
    eos = prepared.eos_id
    kept = [doc for doc in whole if len(doc[0]) <= 24 or (side == "left" or any(doc[1][:23]))]
    assert len(cut) == len(kept)
    fitted = prepared.report["sources"]["chat"]["max_tokens"]
    assert fitted["cut"] == sum(len(ids) > 24 for ids, _ in kept) > 0 and fitted["dropped"] == len(whole) - len(kept)
    for (ids, mask), (whole_ids, whole_mask) in zip(cut, kept):
        assert len(ids) <= 24 and ids[-1] == eos and mask[-1] == 0
        if len(whole_ids) > 24:
            body = whole_ids[:23] if side == "right" else whole_ids[-24:-1]
            assert ids[:-1] == body
            assert mask[:-1] == (whole_mask[:23] if side == "right" else whole_mask[-24:-1])


def test_every_conversation_cut_away_is_an_error(tmp_path):
    path = write_chats(tmp_path / "chat.jsonl")
    with pytest.raises(DataError, match="no training conversation left") as raised:
        prepare(chat_spec(path, chat={"template": "chatml", "max_tokens": 4}), cache_dir=tmp_path / "cache")
    assert raised.value.path == ("data", "chat", "max_tokens")


def stage(seq_len=32):
    return [Stage(0, 0, 10**9, seq_len, {"chat": 1.0})]


def locate(stream, inputs):
    """Where a window starts in a circular token stream."""
    doubled = np.concatenate([stream, stream[: len(inputs) + 1]])
    return next(i for i in range(len(stream)) if np.array_equal(doubled[i : i + len(inputs)], inputs))


def test_batches_mask_targets_and_keep_conversations_apart(chat_data):
    shard = chat_data.train["chat"]
    stream, mask = np.asarray(shard.tokens, dtype=np.int64), np.asarray(shard.loss_mask)
    batch = Sampler(chat_data, stage(32), seed=1).next_batch(16, 32)
    for inputs, targets, docs in zip(batch.input_ids.numpy(), batch.targets.numpy(), batch.document_ids.numpy()):
        positions = (locate(stream, inputs) + 1 + np.arange(32)) % len(stream)
        trained = mask[positions] == 1
        assert np.array_equal(targets[trained], stream[positions][trained])
        assert (targets[~trained] == -100).all()
        # A new document id right after each end-of-document token, and only there.
        ends = inputs == chat_data.eos_id
        assert np.array_equal(docs, np.cumsum(ends) - ends)
    assert (batch.targets == -100).any() and (batch.targets != -100).any()


def test_document_ids_follow_document_ends_even_where_the_template_writes_the_eos_token(tmp_path):
    # Llama 3's end of turn is also the end-of-document token here: a conversation holds several.
    spec = chat_spec(write_chats(tmp_path / "chat.jsonl"), chat={"template": "llama-3"})
    raw = spec.model_dump()
    raw["data"]["tokenizer"]["eos_token"] = "<|eot_id|>"
    prepared = prepare(type(spec).model_validate(raw), cache_dir=tmp_path / "cache")
    ids, mask = documents(prepared.train["chat"])[1]
    assert ids.count(prepared.eos_id) == 4 and ids[-1] == prepared.eos_id and mask[-1] == 1  # not appended twice; trained
    shard = prepared.train["chat"]
    stream, ends = np.asarray(shard.tokens, dtype=np.int64), np.asarray(shard.document_ends)
    batch = Sampler(prepared, stage(64), seed=0).next_batch(8, 64)
    inside = 0
    for inputs, docs in zip(batch.input_ids.numpy(), batch.document_ids.numpy()):
        positions = (locate(stream, inputs) + np.arange(64)) % len(stream)
        document = np.searchsorted(ends, positions, side="right")
        assert np.array_equal(docs, np.concatenate([[0], np.cumsum(np.diff(document) != 0)]))
        inside += int((inputs == prepared.eos_id).sum()) - int(np.diff(docs).sum())
    assert inside > 0  # some eos tokens inside conversations did not start a new document


def test_resume_is_bit_identical_with_masks(chat_data):
    first = Sampler(chat_data, stage(32), seed=4)
    for _ in range(5):
        first.next_batch(4, 32)
    state = json.loads(json.dumps(first.state_dict()))
    expected = [first.next_batch(4, 32) for _ in range(20)]  # several epochs of this small corpus
    again = Sampler(chat_data, stage(32), seed=4)
    again.load_state_dict(state)
    for want in expected:
        got = again.next_batch(4, 32)
        assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.targets, want.targets)
        assert torch.equal(got.document_ids, want.document_ids)


def test_validation_batches_are_masked_too(tmp_path):
    spec = chat_spec(write_chats(tmp_path / "chat.jsonl"))
    raw = spec.model_dump()
    raw["data"]["validation"] = {"fraction": 0.25}
    prepared = prepare(type(spec).model_validate(raw), cache_dir=tmp_path / "cache")
    batches = validation_batches(prepared, 128, 32, 2)
    targets = torch.cat([b.targets for b in batches])
    assert (targets == -100).any() and (targets != -100).any() and all(b.document_ids is not None for b in batches)
    report = prepared.report["sources"]["chat"]
    assert report["val"]["trained_tokens"] == prepared.val["chat"].n_trained > 0
    assert report["trained_tokens"] + report["masked_tokens"] == report["tokens"]


def test_the_loss_ignores_masked_targets(chat_data):
    from tabula.compiler import build_model

    spec = chat_spec("unused.jsonl")
    model = build_model(spec, vocab_size=chat_data.vocab_size, device="meta").materialize("cpu", 0)
    batch = Sampler(chat_data, stage(32), seed=2).next_batch(4, 32)
    logits, loss = model(batch.input_ids, batch.targets, document_ids=batch.document_ids)
    trained = batch.targets != -100
    expected = F.cross_entropy(logits[trained], batch.targets[trained])
    torch.testing.assert_close(loss, expected)
    # Whatever a masked position's target would have been, the loss is the same.
    other = batch.targets.clone()
    other[~trained] = torch.randint(0, chat_data.vocab_size, (int((~trained).sum()),))
    assert not torch.allclose(model(batch.input_ids, other, document_ids=batch.document_ids)[1], loss)
    other[~trained] = -100
    assert torch.equal(model(batch.input_ids, other, document_ids=batch.document_ids)[1], loss)


def test_a_micro_batch_without_trained_targets_has_loss_zero_and_no_gradient(chat_data):
    from tabula.compiler import build_model

    model = build_model(chat_spec("unused.jsonl"), vocab_size=chat_data.vocab_size, device="meta").materialize("cpu", 0)
    inputs = torch.randint(0, chat_data.vocab_size, (2, 16))
    _, loss = model(inputs, torch.full((2, 16), -100))
    loss.backward()
    assert loss.item() == 0.0 and all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_worker_processes_give_the_same_masks(tmp_path, chat_data, monkeypatch):
    from tabula.runtime.data import pipeline

    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 512)  # several chunks, so two worker processes share them
    spec = chat_spec(write_chats(tmp_path / "chat.jsonl"), chat={"template": "chatml", "max_tokens": 24})
    raw = spec.model_dump()
    raw["data"]["workers"] = 2
    spec = type(spec).model_validate(raw)
    pooled = prepare(spec, cache_dir=tmp_path / "pooled")
    single = prepare(spec.model_copy(update={"data": spec.data.model_copy(update={"workers": 1})}), cache_dir=tmp_path / "single")
    assert pooled.fingerprint == single.fingerprint and documents(pooled.train["chat"]) == documents(single.train["chat"])
    assert pooled.report["sources"]["chat"]["max_tokens"] == single.report["sources"]["chat"]["max_tokens"]


def test_a_record_the_template_refuses_is_a_bad_record(tmp_path, chat_data):
    from tabula.runtime.data import save_tokenizer
    from test_data_chat_template import CHATML_JINJA

    folder = tmp_path / "imported"
    folder.mkdir()
    save_tokenizer(chat_data, folder / "tokenizer.json")
    no_system = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + CHATML_JINJA
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": no_system}))
    path = write_chats(tmp_path / "c.jsonl")

    def spec(on_error):
        return make_spec({"tokenizer": {"kind": "file", "path": str(folder / "tokenizer.json")},
                          "sources": {"chat": {"kind": "files", "paths": [str(path)], "format": "jsonl", "records": {"kind": "chat"},
                                               "on_error": on_error}},
                          "packing": {"document_masking": True}, "validation": {"fraction": 0}, "chat": {"template": "tokenizer"}})

    skipped = prepare(spec("skip"), cache_dir=tmp_path / "cache").report["sources"]["chat"]["skipped"]
    assert skipped["count"] == 1 and skipped["first"][0].startswith(f"{path}:1: the chat template of ")
    assert skipped["first"][0].endswith("refused it: System role not supported")
    with pytest.raises(DataError, match=f"{path}:1: the chat template .* refused it") as raised:
        prepare(spec("fail"), cache_dir=tmp_path / "cache")
    assert raised.value.path == ("data", "chat", "template")
