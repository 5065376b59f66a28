"""Fine-tuning as a user runs it: a tiny random transformers Llama (built here, no download) is imported with
`tabula import`, fine-tuned with LoRA on the chat file that ships with tabula (specs/data/chat-sample.jsonl,
chatml, the assistant's tokens alone trained on) by `tabula run --headless`; the loss on those conversations
falls, a stop and resume gives the uninterrupted run's losses to the last bit, and both exports (merged for
transformers, an adapter for peft) compute the tabula model's logits within 1e-4 in fp32. Prompt and prefix
tuning train on the same data and their peft adapters match too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tabula
from tabula.cli import main

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.slow

TABULA = Path(sys.executable).with_name("tabula")
CHAT = Path(__file__).resolve().parents[2] / "specs" / "data" / "chat-sample.jsonl"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # chatml's markers are tokens of the checkpoint's own
STEPS = 30  # of 1k tokens: sequences of 128, a batch of 8


def build_checkpoint(folder: Path) -> None:
    """A tiny random Llama saved with transformers, its byte-level BPE tokenizer trained on the chat file's text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True)
    texts = [m["content"] for line in CHAT.read_text().splitlines() for m in json.loads(line)["messages"]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([*texts, "system user assistant"], trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": SPECIAL[0], "tokenizer_class": "PreTrainedTokenizerFast"}))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, eos_token_id=0,
                                      initializer_range=0.2)  # peaked random logits: adapters have something to lower
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)


def tabula_cli(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TABULA_CACHE_DIR": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(TABULA), *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def fine_tune(work: Path, run: str, finetune: str, *extra: str, resume: bool = False) -> Path:
    """`tabula run spec.yaml --headless` on the chat file, `finetune` the method (a YAML mapping)."""
    tabula_cli(work, "run", "spec.yaml", "--headless", *(["--resume"] if resume else ["--run-dir"]), f"runs/{run}",
               f"data.sources={{chat: {{kind: files, paths: ['{CHAT}'], format: jsonl, records: {{kind: chat}}}}}}",
               "data.chat={template: chatml, max_tokens: 128}", "data.packing={document_masking: true}",
               f"train.finetune={finetune}", "train.optimizer.lr=3e-2", "train.schedule={kind: constant}",
               f"train.budget={{tokens: {STEPS}k}}", "train.log={every_steps: 1}", "train.checkpoint={every_tokens: 10k, keep_last: 5}",
               "track.aim.enabled=false", *extra)
    return work / "runs" / run


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return {e["step"]: e["loss"] for e in map(json.loads, lines) if e["kind"] == "train"}


def some_ids() -> torch.Tensor:
    return torch.randint(0, 384, (2, 24), generator=torch.Generator().manual_seed(0))


def tabula_logits(run_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tabula.load_model(run_dir).eval()(ids)


def peft_logits(out: Path, ids: torch.Tensor, virtual: int = 0) -> torch.Tensor:
    base = transformers.AutoModelForCausalLM.from_pretrained(out / "base").eval()
    model = peft.PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits[:, virtual:]  # prompt tuning's logits include its virtual positions


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with the checkpoint (hf/) and the spec `tabula import hf --out spec.yaml` wrote."""
    folder = tmp_path_factory.mktemp("finetune")
    build_checkpoint(folder / "hf")
    tabula_cli(folder, "import", "hf", "--out", "spec.yaml")
    return folder


@pytest.fixture(scope="module")
def lora(work):
    return fine_tune(work, "lora", "{kind: lora, rank: 4, alpha: 8}")


def test_lora_fine_tuning_on_chat_lowers_the_loss_and_exports_for_transformers_and_peft(work, lora, tmp_path):
    start = next(e for e in map(json.loads, (lora / "events.jsonl").read_text().splitlines()) if e["kind"] == "start")
    assert start["finetune"] == "lora" and 0 < start["trainable_parameters"] < start["parameters"] / 5
    seen = losses(lora)
    assert sorted(seen) == list(range(1, STEPS + 1))
    first, last = sum(seen[s] for s in (1, 2, 3)) / 3, sum(seen[s] for s in (STEPS - 2, STEPS - 1, STEPS)) / 3
    print(f"LoRA on chat: loss {first:.4f} (first 3 steps) -> {last:.4f} (last 3)")
    assert last < first - 0.3

    ids = some_ids()
    ours = tabula_logits(lora, ids)
    base = transformers.AutoModelForCausalLM.from_pretrained(work / "hf").eval()
    with torch.no_grad():
        assert (base(ids).logits - ours).abs().max() > 1e-2  # the adapters moved the model
    assert main(["export", str(lora), "--format", "hf", "--out", str(tmp_path / "merged")]) == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        merged_logits = merged(ids).logits
    assert main(["export", str(lora), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    adapter_logits = peft_logits(tmp_path / "peft", ids)
    print(f"max |logit difference| to tabula: merged {(merged_logits - ours).abs().max():.2e}, peft {(adapter_logits - ours).abs().max():.2e}")
    torch.testing.assert_close(merged_logits, ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(adapter_logits, ours, rtol=1e-4, atol=1e-4)


def test_stop_and_resume_gives_the_same_losses(work, lora):
    """The loop-level proof is tests/runtime/test_finetune.py (LoRA and prefix tuning); this one runs the
    user's path: an imported base, chat data, `--max-steps` then `--resume`."""
    split = fine_tune(work, "split", "{kind: lora, rank: 4, alpha: 8}", "--max-steps", "13")
    assert (split / "checkpoints" / "step-000013").is_dir()
    fine_tune(work, "split", "{kind: lora, rank: 4, alpha: 8}", resume=True)  # the spec with the same overrides
    assert losses(split) == losses(lora)  # every step's loss to the last bit


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
def test_virtual_token_methods_train_on_chat_and_export_for_peft(work, kind, tmp_path):
    # 4 virtual positions come before every sequence of 64: within the checkpoint's 128 positions
    run = fine_tune(work, kind, f"{{kind: {kind}, virtual_tokens: 4}}", "data.curriculum=[{seq_len: 64, mix: {chat: 1.0}}]",
                    "train.budget={tokens: 8k}")
    seen = losses(run)
    assert len(seen) == 8 and all(value == value for value in seen.values())  # 8 steps of 16 rows of 64
    ids = some_ids()
    virtual = 4 if kind == "prompt_tuning" else 0
    assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    tuned = tabula_logits(run, ids)  # load_model keeps the virtual tokens (they have no merged form)
    torch.testing.assert_close(peft_logits(tmp_path / "peft", ids, virtual), tuned, rtol=1e-4, atol=1e-4)
