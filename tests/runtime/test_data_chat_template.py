"""Chat templates: chatml and llama-3 write their publishers' exact strings, a tokenizer's own Jinja
template renders as transformers renders it (in a sandbox), and each marks the assistant's spans."""

from __future__ import annotations

import json

import pytest

from tabula.runtime.data.chat_template import TEMPLATES, JinjaTemplate, resolve_template, tokenizer_template
from tabula.runtime.data.errors import DataError
from tabula.runtime.data.records import Conversation, RecordError
from tabula.schemas.chat import NAMED_TEMPLATES

# The templates as their publishers ship them in tokenizer_config.json (Meta Llama 3 Instruct;
# the ChatML template of transformers' chat-templating guide).
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_JINJA = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MESSAGES = (
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": " 5. "},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "8."},
)


def trained_texts(template, messages=MESSAGES, loss_on="assistant"):
    rendered = template.render_trained(Conversation(tuple(messages), "test:1", loss_on))
    return rendered.text, [rendered.text[a:b] for a, b in rendered.spans]


def test_named_templates_are_the_registered_ones():
    import typing

    from tabula.schemas.chat import ChatFormat

    assert set(TEMPLATES) == set(NAMED_TEMPLATES)
    assert typing.get_args(ChatFormat.model_fields["template"].annotation) == ("auto", "tokenizer", *NAMED_TEMPLATES)


def test_chatml_exact_string_and_trained_spans():
    text, trained = trained_texts(TEMPLATES["chatml"]())
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n 5. <|im_end|>\n<|im_start|>user\nAnd 4 + 4?<|im_end|>\n<|im_start|>assistant\n8.<|im_end|>\n"
    )
    assert trained == [" 5. <|im_end|>", "8.<|im_end|>"]
    assert TEMPLATES["chatml"]().render(MESSAGES[:2], add_generation_prompt=True).endswith("What is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")


def test_llama3_exact_string_and_trained_spans():
    text, trained = trained_texts(TEMPLATES["llama-3"]())
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n5.<|eot_id|>"  # Meta's template trims contents
        "<|start_header_id|>user<|end_header_id|>\n\nAnd 4 + 4?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n8.<|eot_id|>"
    )
    assert trained == ["5.<|eot_id|>", "8.<|eot_id|>"]


def test_last_assistant_trains_on_the_last_answer_only():
    assert trained_texts(TEMPLATES["chatml"](), loss_on="last_assistant")[1] == ["8.<|im_end|>"]


@pytest.mark.parametrize(("name", "source", "context"), [
    ("chatml", CHATML_JINJA, {"eos_token": "<|im_end|>"}),
    ("llama-3", LLAMA3_JINJA, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
])
def test_the_publishers_jinja_templates_render_and_mark_what_tabula_writes(name, source, context):
    jinja = JinjaTemplate(source, context, "tokenizer_config.json")
    assert trained_texts(jinja) == trained_texts(TEMPLATES[name]())
    assert jinja.render(MESSAGES[:2], add_generation_prompt=True) == TEMPLATES[name]().render(MESSAGES[:2], add_generation_prompt=True)


def test_jinja_renders_as_transformers_does(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models

    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, "<unk>")),
                                              bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    hf.chat_template = LLAMA3_JINJA
    jinja = JinjaTemplate(LLAMA3_JINJA, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, "x")
    for prompt in (False, True):
        expected = hf.apply_chat_template(list(MESSAGES[:4]), tokenize=False, add_generation_prompt=prompt)
        assert jinja.render(MESSAGES[:4], add_generation_prompt=prompt) == expected


def write_tokenizer_folder(folder, config: dict, jinja_file: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if jinja_file is not None:
        (folder / "chat_template.jinja").write_text(jinja_file)
    return folder / "tokenizer.json"


class FileTokenizer:
    kind = "file"

    def __init__(self, path):
        self.path = str(path)


def test_the_template_beside_tokenizer_json(tmp_path):
    path = write_tokenizer_folder(tmp_path / "model", {"chat_template": CHATML_JINJA, "bos_token": {"content": "<s>", "lstrip": False},
                                                       "eos_token": "<|im_end|>", "model_max_length": 512})
    template = tokenizer_template(FileTokenizer(path), tmp_path)
    assert template.context == {"bos_token": "<s>", "eos_token": "<|im_end|>"}  # an AddedToken's content
    assert trained_texts(template) == trained_texts(TEMPLATES["chatml"]())
    # chat_template.jinja (transformers' newer layout) wins over the config's; several named: "default"
    write_tokenizer_folder(tmp_path / "model", {"chat_template": [{"name": "tool_use", "template": "x"},
                                                                  {"name": "default", "template": LLAMA3_JINJA}]})
    assert tokenizer_template(FileTokenizer(path), tmp_path).source == LLAMA3_JINJA
    write_tokenizer_folder(tmp_path / "model", {}, jinja_file=CHATML_JINJA)
    assert tokenizer_template(FileTokenizer(path), tmp_path).source == CHATML_JINJA


class Data:
    def __init__(self, template, tokenizer):
        self.chat = type("Chat", (), {"template": template})()
        self.tokenizer = tokenizer


def test_auto_takes_the_tokenizers_own_else_chatml(tmp_path):
    with_template = write_tokenizer_folder(tmp_path / "a", {"chat_template": LLAMA3_JINJA, "bos_token": "<|begin_of_text|>"})
    without = write_tokenizer_folder(tmp_path / "b", {"eos_token": "</s>"})
    assert resolve_template(Data("auto", FileTokenizer(with_template)), tmp_path).name == "tokenizer"
    assert resolve_template(Data("auto", FileTokenizer(without)), tmp_path).name == "chatml"
    assert resolve_template(Data("llama-3", FileTokenizer(with_template)), tmp_path).name == "llama-3"
    with pytest.raises(DataError, match="the tokenizer has no chat template") as raised:
        resolve_template(Data("tokenizer", FileTokenizer(without)), tmp_path)
    assert raised.value.path == ("data", "chat", "template")


def test_a_template_that_does_not_parse_is_a_data_error():
    with pytest.raises(DataError, match="does not parse: line 1"):
        JinjaTemplate("{% for m in messages %}", {}, "tokenizer_config.json")


def test_the_sandbox_keeps_templates_away_from_python():
    # A spec is data: a template may not reach a class, a module or a file.
    for source in ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ messages.append(1) }}", "{{ cycler.__init__.__globals__ }}"):
        with pytest.raises(RecordError, match="refused it"):
            JinjaTemplate(source, {}, "evil").render(MESSAGES)


def test_raise_exception_refuses_the_record():
    source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with the user') }}{% endif %}" + CHATML_JINJA
    with pytest.raises(RecordError, match="refused it: Conversations must start with the user"):
        trained_texts(JinjaTemplate(source, {}, "cfg"))


def test_a_template_that_rewrites_earlier_turns_is_refused():
    # Writes the last message differently from the others: an assistant span cannot be found from prefixes.
    source = "{% for m in messages %}{{ m['role'] }}{% if loop.last %}!{% endif %}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(RecordError, match="writes message 2 differently"):
        trained_texts(JinjaTemplate(source, {}, "cfg"))


def test_generation_blocks_parse():
    source = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
              "{% else %}{{ m['content'] }}{% endif %}|{% endfor %}")
    assert JinjaTemplate(source, {}, "cfg").render(MESSAGES[1:3]) == "What is 2 + 3?| 5. |"
