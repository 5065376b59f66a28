"""The `train:` section: batch, optimizer, schedule, budget, evaluation, checkpoints, fine-tuning
(its methods in finetune.py)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, model_validator

from .base import SpecModel, field_error
from .finetune import Finetune
from .limits import MAX_BATCH_TOKENS
from .quantities import Fraction, PositiveTokenCount

# A moment's decay rate: 1 would never forget (and torch refuses it), 2 diverges.
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]

# ---------------------------------------------------------------- optimizers


class _Optimizer(SpecModel):
    lr: float = Field(gt=0, description="Peak learning rate (after warmup).")
    weight_decay: float = Field(default=0.0, ge=0, description="Decoupled weight decay; never applied to norms, biases and embeddings.")


class AdamW(_Optimizer):
    kind: Literal["adamw"] = Field(description="AdamW (fused or foreach kernels where the device has them).")
    betas: tuple[Beta, Beta] = Field(default=(0.9, 0.95), description="Decay rates of the first and second moment estimates, each in [0, 1).")
    eps: float = Field(default=1e-8, gt=0, description="Added to the denominator for numerical stability.")


class Lion(_Optimizer):
    kind: Literal["lion"] = Field(description="Lion (sign of an interpolated momentum); use a 3-10x smaller lr than AdamW.")
    betas: tuple[Beta, Beta] = Field(default=(0.9, 0.99), description="Interpolation and momentum decay rates, each in [0, 1).")


class Adafactor(_Optimizer):
    kind: Literal["adafactor"] = Field(description="Adafactor (factored second moments: little optimizer memory).")
    beta2_decay: float = Field(default=-0.8, lt=0, description="Exponent of the second-moment decay schedule.")
    eps: float = Field(default=1e-30, gt=0, description="Regularisation of the second moment.")


class SGD(_Optimizer):
    kind: Literal["sgd"] = Field(description="Stochastic gradient descent with optional momentum.")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="Momentum factor; 0 disables it.")
    nesterov: bool = Field(default=False, description="Nesterov momentum.")


Optimizer = Annotated[Union[AdamW, Lion, Adafactor, SGD], Field(discriminator="kind")]

# ---------------------------------------------------------------- schedules (all driven by tokens seen)


class _Schedule(SpecModel):
    warmup: Fraction = Field(default=0.02, description="Linear warmup from 0 over this share of the budget's tokens (0.02 or 2%).")


class Cosine(_Schedule):
    kind: Literal["cosine"] = Field(description="Linear warmup, then cosine decay to min_lr_ratio x lr at the end of the budget.")
    min_lr_ratio: Fraction = Field(default=0.1, description="Final learning rate as a share of the peak.")


class WSD(_Schedule):
    kind: Literal["wsd"] = Field(description="Warmup-stable-decay: warmup, a constant plateau, then a decay over the last share of the budget.")
    decay: Fraction = Field(default=0.2, description="Share of the budget spent decaying at the end.")
    decay_shape: Literal["linear", "cosine", "sqrt"] = Field(default="linear", description="Shape of the final decay.")
    min_lr_ratio: Fraction = Field(default=0.0, description="Final learning rate as a share of the peak.")

    @model_validator(mode="after")
    def _fits(self) -> WSD:
        if self.warmup + self.decay > 1.0:
            raise field_error("decay", f"warmup ({self.warmup:g}) and decay ({self.decay:g}) together exceed the whole budget")
        return self


class Linear(_Schedule):
    kind: Literal["linear"] = Field(description="Linear warmup, then linear decay to min_lr_ratio x lr at the end of the budget.")
    min_lr_ratio: Fraction = Field(default=0.0, description="Final learning rate as a share of the peak.")


class Constant(_Schedule):
    kind: Literal["constant"] = Field(description="Linear warmup, then a constant learning rate.")


Schedule = Annotated[Union[Cosine, WSD, Linear, Constant], Field(discriminator="kind")]

# ---------------------------------------------------------------- budget, eval, checkpoints


class Budget(SpecModel):
    tokens: PositiveTokenCount | None = Field(default=None, description="Train on this many tokens (65536, 64k, 10M, 2.5B).")
    tokens_per_param: float | None = Field(
        default=None, gt=0, le=1e6,
        description="Or: this many tokens per model parameter (Chinchilla-optimal is about 20; the most over-trained small models see about 10^4).",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        if (self.tokens is None) == (self.tokens_per_param is None):
            raise field_error("tokens", "give exactly one of budget.tokens or budget.tokens_per_param")
        return self


class Sample(SpecModel):
    prompt: str = Field(default="", description="The start of a document the greedy sample after each evaluation continues; empty lets the model start one.")
    max_new_tokens: int = Field(default=48, ge=0, le=65536, description="Tokens generated per sample after each evaluation (at most 65536); 0 disables sampling.")


class Benchmarks(SpecModel):
    tasks: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="lm-evaluation-harness task names (its own, or those of local task YAML under `include`) run at each evaluation.")
    limit: int | None = Field(default=None, gt=0, description="At most this many examples a task per evaluation; null: all of them.")
    include: str | None = Field(
        default=None, min_length=1, description="A folder of local lm-eval task YAML (lm-eval's --include_path), relative to the spec file.")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Requests scored together in one forward pass.")


class Eval(SpecModel):
    # a field added later, left out of the canonical form while unset: older specs keep their hash
    canonical_optional: ClassVar[frozenset[str]] = frozenset({"benchmarks"})

    every_tokens: PositiveTokenCount = Field(description="Evaluate on the held-out split every this many training tokens.")
    tokens: PositiveTokenCount = Field(default=65536, description="Held-out tokens read per evaluation.")
    sample: Sample = Field(default_factory=Sample, description="The short greedy sample written after each evaluation.")
    benchmarks: Benchmarks | None = Field(
        default=None,
        description=("lm-eval tasks run on the current model after each evaluation (one process only), recorded as a "
                     "benchmark event, in Aim and TensorBoard; null: none. Tasks whose data needs a download fail offline."),
    )


class Checkpoint(SpecModel):
    every_tokens: PositiveTokenCount | None = Field(default=None, description="Checkpoint every this many training tokens; null only at the end.")
    keep_last: int = Field(default=3, ge=1, description="Keep this many most recent checkpoints.")
    keep_best_by: Literal["val_loss"] | None = Field(default="val_loss", description="Also keep the checkpoint with the best value of this metric.")
    on_write_error: Literal["continue", "stop"] = Field(
        default="continue",
        description=(
            "A checkpoint the disk refuses (full, over quota, an I/O error): its partial folder is removed and the previous "
            "checkpoint kept either way. continue: train on and try again at the next checkpoint, so freeing space saves the "
            "run, but a crash before a checkpoint succeeds loses every step since the last one written. stop: end the run "
            "now as failed (exit 3) with the last checkpoint written. A failed final checkpoint fails the run either way."
        ),
    )


class Log(SpecModel):
    every_steps: int = Field(
        default=10, ge=1, description="Read and record train metrics every this many optimizer steps (reading them syncs the device)."
    )
    every_seconds: float | None = Field(
        default=5.0,
        gt=0,
        le=86400,
        description=(
            "Also record them when this many seconds passed since the last record, so slow steps show numbers early "
            "(the first step of a session is always recorded). One process only: ranks would have to agree on a clock, "
            "so a run of several ranks records every_steps alone. null: every_steps alone."
        ),
    )


class Train(SpecModel):
    batch_tokens: PositiveTokenCount = Field(
        le=MAX_BATCH_TOKENS, description="Tokens per optimizer step, over all ranks (at most 2**40); micro-batch and accumulation are derived.")
    micro_batch: Literal["auto"] | Annotated[int, Field(gt=0)] = Field(
        default="auto", description="Sequences per rank per forward pass; auto derives it from batch_tokens, seq_len and memory."
    )
    optimizer: Optimizer = Field(description="The optimizer and its learning rate.")
    schedule: Schedule = Field(default_factory=lambda: Cosine(kind="cosine"), description="Learning-rate schedule, driven by tokens seen.")
    grad_clip: float | None = Field(default=1.0, gt=0, description="Clip the global gradient norm to this; null disables clipping.")
    budget: Budget = Field(description="How long to train.")
    eval: Eval | None = Field(default=None, description="Periodic evaluation; null disables it.")
    checkpoint: Checkpoint = Field(default_factory=Checkpoint, description="When checkpoints are written and which are kept.")
    log: Log = Field(default_factory=Log, description="How often train metrics are recorded.")
    on_nonfinite: Literal["skip", "stop", "rollback"] = Field(
        default="skip",
        description="A non-finite loss or gradient: skip the batch, stop at the last good checkpoint, or roll back to it and skip the data window.",
    )
    max_consecutive_skips: int = Field(
        default=8,
        ge=1,
        le=1_000_000,
        description=(
            "With on_nonfinite: skip, this many refused updates in a row end the run as failed (exit 3) at its last good "
            "checkpoint: a run whose every batch is skipped (a learning rate far too high) trains nothing."
        ),
    )
    finetune: Finetune | None = Field(
        default=None,
        description=(
            "Adapt the model instead of training all of it: lora, dora, qlora, prompt_tuning, prefix_tuning (peft's "
            "methods; the base frozen, checkpoints hold the trained weights only), or full with frozen parameters. "
            "null trains every parameter."
        ),
    )

    @model_validator(mode="after")
    def _budget_holds_a_step(self) -> Train:
        # the run refuses it ("nothing to train"); tokens_per_param needs the model's size: the plan checks it
        if self.budget.tokens is not None and self.budget.tokens < self.batch_tokens:
            raise field_error(("budget", "tokens"), f"the budget ({self.budget.tokens} tokens) is smaller than one batch "
                                                    f"(batch_tokens {self.batch_tokens}): nothing to train")
        return self
