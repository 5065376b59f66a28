"""The tiny quickstart variant that runtime and e2e tests train (importable from any test: tests/ is on
the path through its conftest.py): d_model 64, 2 layers, a 512-token BPE over 40 stdlib files, seq_len
32 then 64 after 8k tokens, 512 tokens a step (48 steps), a checkpoint every 4k tokens (8 steps)."""

from __future__ import annotations

from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[1] / "specs" / "quickstart.yaml"


def tiny_spec_yaml(*, micro_batch: int | None = None, aim: str = "{enabled: false}") -> str:
    """The spec's YAML text. `micro_batch`: sequences a micro-batch (None: the plan decides); `aim`: the
    spec's track.aim mapping, in flow style."""
    micro = f"\n  micro_batch: {micro_batch}" if micro_batch is not None else ""
    return f"""\
extends: {QUICKSTART}
name: tiny
model:
  d_model: 64
  n_layers: 2
  max_seq_len: 64
  block: {{mlp: {{kind: swiglu, hidden: 128}}}}
data:
  tokenizer: {{kind: bpe, vocab_size: 512, max_chars: 256k}}
  sources:
    stdlib: {{kind: python_stdlib, max_files: 40}}
  curriculum:
    - {{until_tokens: 8k, seq_len: 32, mix: {{stdlib: 1.0}}}}
    - {{seq_len: 64}}
train:
  batch_tokens: 512{micro}
  budget: {{tokens: 24k}}
  eval: {{every_tokens: 8k, tokens: 1024, sample: {{max_new_tokens: 4}}}}
  checkpoint: {{every_tokens: 4k, keep_last: 2}}
  log: {{every_steps: 1}}
track:
  runs_dir: runs
  aim: {aim}
"""
