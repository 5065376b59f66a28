"""What the evaluation tests share besides fixtures (a module of its own: every conftest is imported as `conftest`)."""

TINY_RUN_OVERRIDES = (
    "train.budget.tokens=4k",
    "train.eval.every_tokens=2k",
    "train.eval.tokens=512",
    "train.checkpoint.every_tokens=4k",
    "data.sources.stdlib.max_files=15",
    "data.tokenizer.max_chars=96k",
)
