"""Spec paths of the quickstart's numbers, and values none of them may take (shared by the limit
tests and the hostile command-line walk)."""

from __future__ import annotations

# Spec paths of quickstart's numbers, by kind. Every one refuses NaN, infinities, wrong types and
# whole numbers beyond 64 bits; `-1` is below the range of each.
INTEGERS = [
    "seed", "model.d_model", "model.n_layers", "model.max_seq_len", "model.block.attention.n_heads",
    "model.block.attention.n_kv_heads", "model.block.mlp.hidden", "data.tokenizer.vocab_size",
    "data.tokenizer.min_frequency", "data.workers", "data.validation.max_documents", "data.filters.0.min_chars",
    "data.filters.1.num_perm", "parallel.world_size", "parallel.checkpoint_every_n", "train.micro_batch",
    "train.checkpoint.keep_last", "train.log.every_steps", "train.eval.sample.max_new_tokens",
]
TOKEN_COUNTS = [
    "train.batch_tokens", "train.budget.tokens", "train.eval.every_tokens", "train.eval.tokens",
    "train.checkpoint.every_tokens", "data.curriculum.0.until_tokens", "data.tokenizer.max_chars",
]
FLOATS = [
    "train.optimizer.lr", "train.optimizer.weight_decay", "train.optimizer.eps", "train.optimizer.betas.0",
    "train.optimizer.betas.1", "train.grad_clip", "model.dropout", "model.init.std", "model.position.theta",
    "model.block.norm.eps", "data.validation.fraction", "train.schedule.warmup", "train.schedule.min_lr_ratio",
    "data.curriculum.0.mix.stdlib", "data.filters.1.threshold",
]
NUMBERS = INTEGERS + TOKEN_COUNTS + FLOATS
NEVER_A_NUMBER = [".nan", ".inf", "-.inf", "[1]", "{a: 1}", "'x'", "true", "-1", str(-(2**64)), "9" * 400, "1e400"]
NEVER_A_WHOLE_NUMBER = [*NEVER_A_NUMBER, str(2**64), "1.5"]  # a float field reads 2**64 as the float it is
