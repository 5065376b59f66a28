"""The root of an experiment spec: `name`, `extends`, `seed`, `model`, `data`, `parallel`, `train`, `track`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from .base import SpecModel, field_error
from .data import Data, _TrainedTokenizer
from .limits import MAX_LAYERS, MAX_TENSOR_ELEMENTS, elements, weight_shapes
from .finetune import virtual_tokens
from .model import Model
from .parallel import Parallel
from .track import Track
from .train import Train

# The run folder is <name>-<yyyymmdd-hhmmss> (16 more characters), and checkpoints and Aim add their own
# names below it: 100 keeps every path component far under the 255 bytes filesystems allow.
MAX_NAME_LENGTH = 100
KNOWN_TOKENIZER_SIZES = {"cl100k_base": 100277, "o200k_base": 200019, "p50k_base": 50281, "r50k_base": 50257, "gpt2": 50257}


class Spec(SpecModel):
    """A whole experiment: what to train, on what data, how, and where it is recorded."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=MAX_NAME_LENGTH,
        description=f"Experiment name; names the run directory <name>-<yyyymmdd-hhmmss> and the Aim experiment: letters, digits, . _ -, at most {MAX_NAME_LENGTH} characters.",
    )
    extends: str | None = Field(
        default=None,
        description="A spec this one builds on: a path relative to this file, or a preset name under specs/presets/. Deep-merged; lists replace. A file outside this spec's folder and specs/ needs --allow-extends-outside.",
    )
    seed: int = Field(default=1337, ge=0, le=2**63 - 1, description="Seeds every random number generator: initialisation, data order, dropout (0 to 2**63 - 1).")
    model: Model = Field(description="The model graph.")
    data: Data = Field(description="The data curriculum.")
    parallel: Parallel = Field(default_factory=Parallel, description="The parallelism plan.")
    train: Train = Field(description="The training recipe.")
    track: Track = Field(default_factory=Track, description="Run directories and experiment tracking.")

    # Set by the loader (schemas/loader.py); not part of the spec's value, its equality or its hash.
    _source_path: Path | None = PrivateAttr(default=None)
    _base_dir: Path | None = PrivateAttr(default=None)
    _source_map: Any = PrivateAttr(default=None)

    @property
    def source_path(self) -> Path | None:
        """The file this spec was loaded from (absolute), or None for a spec from text or code."""
        return self._source_path

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the spec (files sources, tokenizer files) are relative to:
        the spec file's folder, or the working directory."""
        if self._source_path is not None:
            return self._source_path.parent
        return self._base_dir if self._base_dir is not None else Path.cwd()

    def __eq__(self, other: object) -> bool:
        # Two specs are equal when their values are, wherever they were loaded from.
        if not isinstance(other, Spec):
            return NotImplemented
        return self.__dict__ == other.__dict__

    @model_validator(mode="after")
    def _sections_agree(self) -> Spec:
        for index, stage in enumerate(self.data.curriculum):
            if stage.seq_len is not None and stage.seq_len > self.model.max_seq_len:
                raise field_error(
                    ("data", "curriculum", index, "seq_len"),
                    f"seq_len {stage.seq_len} exceeds model.max_seq_len ({self.model.max_seq_len})",
                )
        tokenizer = self.data.tokenizer
        if isinstance(self.model.vocab_size, int) and isinstance(tokenizer, _TrainedTokenizer):
            if tokenizer.vocab_size > self.model.vocab_size:
                raise field_error(
                    ("model", "vocab_size"),
                    f"model.vocab_size ({self.model.vocab_size}) is smaller than the tokenizer's ({tokenizer.vocab_size})",
                )
        if self.parallel.activation_checkpointing == "every_n" and self.parallel.checkpoint_every_n > self.model.n_layers:
            raise field_error(
                ("parallel", "checkpoint_every_n"),
                f"checkpoint_every_n ({self.parallel.checkpoint_every_n}) exceeds model.n_layers ({self.model.n_layers})",
            )
        self._finetune_fits()
        self._vision_fits()
        return self

    def _vision_fits(self) -> None:
        """model.vision and image_text sources come together, on a backend that passes images through."""
        images = self.data.image_sources
        if images and self.model.vision is None:
            raise field_error(("data", "sources", images[0], "kind"), f"source {images[0]!r} holds images: the model needs an "
                              "image encoder (model.vision)")
        if self.model.vision is None:
            return
        if not images:
            raise field_error(("model", "vision"), "model.vision encodes images, and no source holds any: add a kind: image_text source")
        if self.parallel.backend == "fsdp" or self.parallel.pipeline.stages > 1:
            what = "pipeline stages" if self.parallel.pipeline.stages > 1 else "the fsdp backend"
            raise field_error(("model", "vision"), f"image-text training runs on the local and deepspeed (ZeRO) backends, not with {what}")

    @model_validator(mode="after")
    def _sizes_fit(self) -> Spec:
        # Sizes that each pass their own bounds can multiply past what a tensor can hold: the run
        # (not validate, not plan) would crash allocating it. Whether it fits a device is the runtime's call.
        if self.model.n_layers > MAX_LAYERS:
            raise field_error(("model", "n_layers"), f"{self.model.n_layers:,} blocks is more than the {MAX_LAYERS} a model may have")
        per_block = fixed = 0
        for what, factors, in_block in weight_shapes(self):
            count = elements(factors)
            if count > MAX_TENSOR_ELEMENTS:
                path = max(factors, key=lambda factor: factor[0])[2]
                product = " x ".join(f"{name} {size:,}" for size, name, _ in factors)
                raise field_error(path, f"{what} would hold {count:.3g} elements ({product}), more than any tensor can hold "
                                        f"({MAX_TENSOR_ELEMENTS + 1:.3g} float32 elements are 2**63 bytes, past torch's 64-bit byte count)")
            per_block, fixed = (per_block + count, fixed) if in_block else (per_block, fixed + count)
        if per_block * self.model.n_layers + fixed > MAX_TENSOR_ELEMENTS:
            raise field_error(("model", "n_layers"), f"{self.model.n_layers} blocks of about {per_block:.3g} weights each are more than "
                                                     f"the {MAX_TENSOR_ELEMENTS + 1:.3g} float32 elements a run's flat buffers can hold (2**63 bytes)")
        return self

    def _finetune_fits(self) -> None:
        """train.finetune's globs name the model's parameters, its method fits the attention, and its
        virtual tokens fit in model.max_seq_len beside every stage's sequences."""
        finetune = self.train.finetune
        if finetune is None:
            return
        finetune.check(self.model, self.model.parameter_shapes(self.vocab_size or 1))
        extra = virtual_tokens(finetune)
        seq_len = self.model.max_seq_len  # the first stage's default; later ones carry over
        for index, stage in enumerate(self.data.curriculum):
            seq_len = stage.seq_len or seq_len
            if extra and seq_len + extra > self.model.max_seq_len:
                path = ("data", "curriculum", index, "seq_len") if stage.seq_len else ("train", "finetune", "virtual_tokens")
                raise field_error(path, f"sequences of {seq_len} tokens and {extra} virtual tokens exceed model.max_seq_len "
                                        f"({self.model.max_seq_len}): set data.curriculum.{index}.seq_len to at most "
                                        f"{self.model.max_seq_len - extra}")

    @property
    def vocab_size(self) -> int | None:
        """The model's vocabulary size (derived): model.vocab_size, or the tokenizer's where it is known
        without loading it; None where only the tokenizer file can tell."""
        if isinstance(self.model.vocab_size, int):
            return self.model.vocab_size
        tokenizer = self.data.tokenizer
        if isinstance(tokenizer, _TrainedTokenizer):
            return tokenizer.vocab_size
        if tokenizer.kind == "tiktoken":
            return KNOWN_TOKENIZER_SIZES.get(tokenizer.encoding)
        return None
