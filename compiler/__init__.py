"""tabula.compiler: a validated spec lowered to PyTorch modules and a training plan.

    build_model(spec, *, vocab_size=None, device="meta") -> Transformer
    apply_compile(model, compile_spec, device_type), apply_activation_checkpointing(model, policy, every_n)
    make_plan(spec, ...) -> Plan             (tabula.compiler.plan; no torch)
    tabula.compiler.estimate.estimate(spec, plan) -> Estimate   (no torch)

torch is imported only when a model is built, so `tabula plan` and the wizard's plan panel
start without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tabula.schemas.spec import Spec

    from .model import Transformer

# Names other modules of the compiler provide, imported when first used. (`estimate` is not
# here: it is also the name of a submodule, which would shadow the function once imported.)
_LAZY = {
    "Transformer": "tabula.compiler.model",
    "apply_compile": "tabula.compiler.compile",
    "apply_activation_checkpointing": "tabula.compiler.compile",
    "make_plan": "tabula.compiler.plan",
}


def build_model(spec: Spec, *, vocab_size: int | None = None, device: torch.device | str = "meta") -> Transformer:
    """The spec's model, built on `device` (default meta: nothing allocated; call
    `model.materialize(device, seed)`). On a real device the weights are initialised with
    spec.seed. `vocab_size` overrides the spec's (needed where only the tokenizer knows it).
    Raises ValueError when no vocabulary size is known."""
    import torch

    from .model import Transformer

    vocab = vocab_size if vocab_size is not None else spec.vocab_size
    if vocab is None:
        raise ValueError(
            "model.vocab_size is auto and the tokenizer's size is known only once it is loaded: "
            "pass vocab_size=tokenizer vocabulary size, or set model.vocab_size in the spec"
        )
    from .kernels import apply_kernels

    with torch.device(device):
        model = Transformer(spec.model, vocab)
    apply_kernels(model, spec.model.kernels)  # Liger's modules, where model.kernels asks for them
    if torch.device(device).type != "meta":
        model.init_weights(spec.seed)
    return model


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tabula.compiler' has no attribute {name!r}")


__all__ = ["build_model", *_LAZY]
