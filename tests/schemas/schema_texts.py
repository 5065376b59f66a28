"""Spec texts shared by the spec-language tests."""

from __future__ import annotations

import textwrap

MINIMAL = textwrap.dedent("""\
    name: tiny
    model:
      d_model: 64
      n_layers: 2
      max_seq_len: 128
      block:
        attention: {kind: gqa, n_heads: 4, n_kv_heads: 2}
        mlp: {kind: swiglu, hidden: 128}
    data:
      tokenizer: {kind: bpe, vocab_size: 512}
      sources:
        stdlib: {kind: python_stdlib}
    train:
      batch_tokens: 4k
      optimizer: {kind: adamw, lr: 1.0e-3}
      budget: {tokens: 1M}
    """)
