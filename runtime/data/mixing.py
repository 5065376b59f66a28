"""Sampling weights beyond a stage's written mix (data.mixture): by temperature over source sizes,
UniMax, and online reweighting from the training loss (DoReMi-style).

The static strategies are pure functions of the stage and the sources' training tokens. The online
one keeps a log-factor by source, updated every `every_tokens` from the losses the loop observes;
its state is JSON-able (floats round-trip exactly through JSON), so a resumed run continues with
the same weights, bit for bit.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ...schemas.data import OnlineMixture, TemperatureMixture, UniMaxMixture
from ...schemas.registry import Registry

# kind -> function(stage mix, source tokens, stage tokens, mixture) -> weights (normalised)
STATIC_MIXTURES: Registry[Any] = Registry("mixture")


def _normalised(weights: Mapping[str, float]) -> dict[str, float]:
    total = math.fsum(weights.values())
    return {name: weight / total for name, weight in weights.items()}


@STATIC_MIXTURES.register("temperature")
def temperature_weights(mix: Mapping[str, float], sizes: Mapping[str, int], span: int, mixture: TemperatureMixture) -> dict[str, float]:
    """weight_i proportional to mix_i * tokens_i ** (1 / T)."""
    exponent = 1.0 / mixture.mix_temperature
    # In logs: sizes ** (1 / T) overflows no float for any T in range.
    logs = {name: math.log(mix[name]) + exponent * math.log(max(sizes[name], 1)) for name in mix}
    top = max(logs.values())
    return _normalised({name: math.exp(value - top) for name, value in logs.items()})


@STATIC_MIXTURES.register("unimax")
def unimax_weights(mix: Mapping[str, float], sizes: Mapping[str, int], span: int, mixture: UniMaxMixture) -> dict[str, float]:
    """UniMax: the stage's `span` tokens shared out in proportion to mix (equal for an equal mix),
    smallest sources (by tokens per unit of mix) first, each capped at max_epochs of its tokens;
    what a capped source leaves goes to the rest. Where every source is capped, the weights follow
    the caps (the stage then repeats data beyond max_epochs)."""
    order = sorted(mix, key=lambda name: (sizes[name] / mix[name], name))
    left, share_left = float(span), math.fsum(mix.values())
    budget: dict[str, float] = {}
    for name in order:
        fair = left * mix[name] / share_left
        budget[name] = min(fair, mixture.max_epochs * sizes[name])
        left -= budget[name]
        share_left -= mix[name]
    if math.fsum(budget.values()) <= 0:
        return _normalised(dict(mix))
    return _normalised({name: budget[name] for name in mix})


def static_weights(mix: Mapping[str, float], sizes: Mapping[str, int], span: int, mixture: Any) -> dict[str, float]:
    """A stage's weights (normalised, in the mix's order) under `mixture` (None or online: its mix)."""
    if mixture is None or isinstance(mixture, OnlineMixture):
        return _normalised(dict(mix))
    return STATIC_MIXTURES[mixture.kind](mix, sizes, span, mixture)


class OnlineWeights:
    """DoReMi-style factors by source: log_factor_i += step_size * max(loss_i - reference_i, 0)
    at each update (the loss itself without a reference); the weights in force are the stage's
    mix times exp(log_factor), normalised, blended with `smoothing` of the equal mixture and
    kept within [min_weight, max_weight]."""

    def __init__(self, mixture: OnlineMixture, sources: list[str]):
        self.mixture = mixture
        self.log_factors = {name: 0.0 for name in sources}
        self.last_update = 0  # training tokens at the latest update
        self.losses: dict[str, float] = {}  # the losses of the latest update

    def due(self, tokens: int) -> bool:
        return tokens - self.last_update >= self.mixture.every_tokens

    def update(self, tokens: int, losses: Mapping[str, float]) -> None:
        """Move the factors from the losses (by source) observed since the last update."""
        reference = self.mixture.reference_loss or {}
        for name, loss in sorted(losses.items()):
            if name in self.log_factors and math.isfinite(loss):
                excess = max(loss - reference.get(name, 0.0), 0.0)
                self.log_factors[name] += self.mixture.step_size * excess
        top = max(self.log_factors.values())
        self.log_factors = {name: value - top for name, value in self.log_factors.items()}  # stays bounded
        self.last_update = tokens
        self.losses = {name: float(loss) for name, loss in sorted(losses.items())}

    def weights(self, base: Mapping[str, float]) -> dict[str, float]:
        """The weights in force over the sources of `base` (a stage's normalised weights)."""
        raw = _normalised({name: base[name] * math.exp(max(self.log_factors[name], -700.0)) for name in base})
        c = self.mixture.smoothing
        blended = {name: (1 - c) * weight + c / len(raw) for name, weight in raw.items()}
        return _bounded(blended, self.mixture.min_weight, self.mixture.max_weight)

    def state_dict(self) -> dict[str, Any]:
        return {"log_factors": dict(self.log_factors), "last_update": self.last_update, "losses": dict(self.losses)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        factors = {name: float(state["log_factors"].get(name, 0.0)) for name in self.log_factors}
        if not all(math.isfinite(value) for value in factors.values()):
            raise ValueError("log_factors must be finite")
        self.log_factors, self.last_update = factors, int(state["last_update"])
        self.losses = {str(name): float(value) for name, value in state.get("losses", {}).items()}


def _bounded(weights: dict[str, float], low: float, high: float) -> dict[str, float]:
    """Weights (summing to 1) moved into [low, high] by clipping and spreading the difference over
    the sources still inside, repeated until none is out (a few rounds at most)."""
    n = len(weights)
    low, high = min(low, 1.0 / n), max(high, 1.0 / n)  # a subset of the sources may not reach the bounds
    fixed: dict[str, float] = {}
    free = dict(weights)
    for _ in range(n + 1):
        mass = 1.0 - math.fsum(fixed.values())
        total = math.fsum(free.values())
        scaled = {name: weight * mass / total if total > 0 else mass / len(free) for name, weight in free.items()}
        out = {name: (low if weight < low else high) for name, weight in scaled.items() if not low <= weight <= high}
        if not out:
            return {name: fixed.get(name, scaled.get(name, 0.0)) for name in weights}
        fixed.update(out)
        free = {name: weight for name, weight in free.items() if name not in out}
        if not free:
            return _normalised({name: fixed[name] for name in weights})
    return _normalised({name: fixed.get(name, free.get(name, 0.0)) for name in weights})


def source_losses(batch: Any, rows: range, sources: list[str], evaluate: Any, reduce_mean: Any) -> dict[str, float]:
    """Mean loss of each source's rows of a training `batch` (its `sources`) over all ranks: each rank
    evaluates its own `rows` one at a time (so every rank makes the same number of calls: an engine's
    evaluate may be collective), then `reduce_mean` (the engine's all-reduce) combines the sums and
    counts, so every rank gets the same losses. `evaluate(input_ids, targets, document_ids)` returns
    a row's mean loss as a tensor on the engine's device."""
    import torch  # the runtime's; this module's weights stay torch-free

    from .image_batches import image_rows

    totals: torch.Tensor | None = None
    n = len(sources)
    for row in rows:
        window = slice(row, row + 1)
        documents = batch.document_ids[window] if batch.document_ids is not None else None
        loss = evaluate(batch.input_ids[window], batch.targets[window], documents, **image_rows(batch, row, row + 1)).float()
        if totals is None:
            totals = torch.zeros(2 * n, dtype=torch.float32, device=loss.device)
        index = sources.index(batch.sources[row])
        totals[index] += loss
        totals[n + index] += 1
    if totals is None:
        return {}
    totals = reduce_mean(totals).double().cpu()
    return {name: float(totals[i] / totals[n + i]) for i, name in enumerate(sources) if totals[n + i] > 0}
