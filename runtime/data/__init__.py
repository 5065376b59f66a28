"""The data pipeline: sources, filters, tokenizer, token cache, curriculum sampler.

    prepared = prepare(spec)                       # PreparedData (cached by fingerprint)
    sampler = Sampler(prepared, plan.stages, spec.seed)
    batch = sampler.next_batch(n_sequences, seq_len)

Names are imported lazily so that `import tabula.runtime.data` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "prepare": "pipeline", "PreparedData": "pipeline", "save_tokenizer": "pipeline", "open_entry": "pipeline", "find_prepared": "pipeline",
    "Sampler": "sampler", "Batch": "sampler", "validation_batches": "sampler", "planned_epochs": "sampler",
    "DataError": "errors", "TokenShard": "shards", "terminal_progress": "progress", "cache_root": "cache",
    "resolve_template": "chat_template", "Conversation": "records", "image_rows": "image_batches",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
