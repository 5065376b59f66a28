"""Evaluation and insight over runs: the runs table and curves (`runs.py`, torch-free), plots (`plots.py`),
TensorBoard (`tensorboard.py`), the learning-rate range test (`lr_find.py`), lm-evaluation-harness
benchmarks (`harness.py`), perplexity on a text file (`perplexity.py`).

Modules are imported by name (`from tabula.runtime.evaluation.runs import summarize_run`): this package
imports nothing heavy itself, so `tabula runs` starts without torch."""
