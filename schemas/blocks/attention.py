"""Attention kinds with query, key and value heads: mha, gqa, mqa; and what every attention kind
answers (AttentionSpec), MLA included (schemas/blocks/mla.py).

Every kind reports, torch-free, what compiler/blocks builds from it: its derived widths
(`dims(d_model)`), its parameters, FLOPs and activation bytes (schemas/blocks/costs.py), and the
checks its widths need against the model's (`check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ..base import SpecModel, field_error
from .costs import FLOPS_PER_PARAMETER, Shapes, Storage, count, linear
from .sparsity import BACKEND_DESCRIPTION, Backend, MaskPattern, SparseAttention


@dataclass(frozen=True)
class AttentionDims:
    """The widths an attention kind derives over a d_model-wide residual stream."""

    n_heads: int
    n_kv_heads: int  # key/value heads: n_heads (mha, mla), n_kv_heads (gqa), 1 (mqa)
    head_dim: int  # width of a query/key head (mla: content and rotary parts together)
    v_head_dim: int  # width of a value head
    rotary_dim: int  # width RoPE rotates in each query/key head


class AttentionSpec(SpecModel):
    """What every attention kind has and answers. Paths in `check`'s errors are below `model`."""

    n_heads: int = Field(gt=0, description="Number of query heads; d_model must be divisible by it unless head_dim is set.")
    head_dim: int | None = Field(
        default=None, gt=0, description="Width of each head; null means d_model / n_heads."
    )
    window: int | None = Field(
        default=None,
        gt=0,
        description="Sliding-window attention: each token sees at most this many previous tokens (itself included); null attends to the whole context.",
    )
    qk_norm: bool = Field(default=False, description="RMS-normalise queries and keys per head before the dot product (stabilises large learning rates).")
    sparse: SparseAttention | None = Field(
        default=None,
        description="Sparse patterns added to the sliding window (which they require): global tokens (Longformer, BigBird) "
        "and block-sparse strides. null: the window alone.",
    )
    backend: Backend = Field(default="sdpa", description=BACKEND_DESCRIPTION)

    # How many matmuls read the attention's input (its norm's output): q, k, v (mla: the query
    # path, the kv latent and the rotary key). Under autocast each keeps its own copy.
    input_readers: ClassVar[int] = 3

    @model_validator(mode="after")
    def _sparse_needs_window(self) -> AttentionSpec:
        if self.sparse is not None and self.window is None:
            raise field_error("sparse", "sparse patterns add keys to a sliding window: set window (without one every token sees the whole context)")
        return self

    @property
    def pattern(self) -> MaskPattern:
        """Which keys each query sees (window and sparse patterns)."""
        return MaskPattern.of(self)

    def dims(self, d_model: int) -> AttentionDims:
        """The derived widths over a `d_model`-wide stream."""
        raise NotImplementedError

    def projection_biases(self) -> dict[str, bool]:
        """Which projections add a bias, by the names the `bias` mapping uses."""
        raise NotImplementedError

    def parameter_shapes(self, prefix: str, d_model: int) -> Shapes:
        """(name, shape) of the module's parameters, in its registration order, below `prefix`."""
        raise NotImplementedError

    def kernel_bytes_per_token(self, dims: AttentionDims, seq_len: int, storage: Storage) -> int:
        """Bytes per token of the projections' outputs and the attention kernel's saved tensors."""
        raise NotImplementedError

    def flops_per_token(self, d_model: int, seq_len: int) -> int:
        """Training FLOPs of one token: 6 per parameter, and the scores and weighted values,
        6 T nh (qk + v) (the PaLM appendix's 12 H Q T with Q split into the query/key and value
        head widths). sdpa's kernels compute the whole causal square, so T is all of seq_len, window or not;
        FlexAttention computes the pattern's pairs: T times the share of the causal square the window and
        sparse patterns keep (`MaskPattern.density`; documents, known only from the data, not counted)."""
        dims = self.dims(d_model)
        scores = FLOPS_PER_PARAMETER * seq_len * dims.n_heads * (dims.head_dim + dims.v_head_dim)
        if self.backend == "flex":
            scores = round(scores * self.pattern.density(seq_len))
        return FLOPS_PER_PARAMETER * count(self.parameter_shapes("", d_model)) + scores

    def activation_bytes_per_token(self, d_model: int, seq_len: int, storage: Storage, dropout: float) -> int:
        """Bytes per token the module keeps for the backward (its input's copies are the norm's):
        the kind's projections and kernel, QK-norm's, the log-sum-exp per head and, with dropout
        on the attention weights, what the unfused kernel keeps (CPUs): scaled queries, softmax,
        mask and dropped probabilities (T x T per head, as Korthikanti's 5 a s / h term)."""
        dims = self.dims(d_model)
        nh, qk = dims.n_heads, dims.head_dim
        total = self.kernel_bytes_per_token(dims, seq_len, storage)
        if self.qk_norm:
            # input (fp32) and normalised output of q (n_heads) and k (n_kv_heads: shared heads are normed once)
            total += (nh + dims.n_kv_heads) * qk * (4 + storage.matmul)
        total += nh * 4  # log-sum-exp
        if dropout > 0:
            total += nh * qk * storage.matmul + 3 * nh * seq_len * storage.matmul
        return total

    def check(self, d_model: int, *, rotary: bool) -> None:
        """Raises a field error where the kind's widths do not fit a `d_model`-wide model whose
        positions rotate queries and keys (`rotary`) or not."""
        self._check_heads_divide(d_model)
        width = self.dims(d_model).rotary_dim
        if rotary and width % 2:
            raise field_error(("block", "attention", "n_heads"), f"RoPE needs an even head width, found {width}")

    def _check_heads_divide(self, d_model: int) -> None:
        if self.head_dim is None and d_model % self.n_heads:
            raise field_error(
                ("block", "attention", "n_heads"),
                f"d_model ({d_model}) must be divisible by n_heads ({self.n_heads}), or set head_dim",
            )

    def _qk_norm_shapes(self, prefix: str, head_dim: int) -> Shapes:
        return [(prefix + "q_norm.weight", (head_dim,)), (prefix + "k_norm.weight", (head_dim,))] if self.qk_norm else []


class AttentionBias(SpecModel):
    """Which projections of mha, gqa or mqa attention add a bias."""

    q: bool = Field(default=False, description="The query projection (q_proj).")
    k: bool = Field(default=False, description="The key projection (k_proj).")
    v: bool = Field(default=False, description="The value projection (v_proj).")
    o: bool = Field(default=False, description="The output projection (o_proj), which writes into the residual stream.")


class _HeadsAttention(AttentionSpec):
    """Queries, keys and values projected straight from the hidden state (CausalSelfAttention)."""

    bias: bool | AttentionBias = Field(
        default=False,
        description="Biases on the query, key, value and output projections: true or false for all four, or one per projection, e.g. {o: true}.",
    )

    def projection_biases(self) -> dict[str, bool]:
        if isinstance(self.bias, bool):
            return dict.fromkeys(AttentionBias.model_fields, self.bias)
        return self.bias.model_dump()

    def _dims(self, d_model: int, n_kv_heads: int) -> AttentionDims:
        head = self.head_dim if self.head_dim is not None else d_model // self.n_heads
        return AttentionDims(self.n_heads, n_kv_heads, head, head, head)

    def parameter_shapes(self, prefix: str, d_model: int) -> Shapes:
        dims, bias = self.dims(d_model), self.projection_biases()
        q, kv = dims.n_heads * dims.head_dim, dims.n_kv_heads * dims.head_dim
        shapes = linear(prefix + "q_proj", d_model, q, bias["q"])
        shapes += linear(prefix + "k_proj", d_model, kv, bias["k"])
        shapes += linear(prefix + "v_proj", d_model, kv, bias["v"])
        shapes += linear(prefix + "o_proj", q, d_model, bias["o"])
        return shapes + self._qk_norm_shapes(prefix, dims.head_dim)

    def kernel_bytes_per_token(self, dims: AttentionDims, seq_len: int, storage: Storage) -> int:
        nh, hd = dims.n_heads, dims.head_dim
        masked = not self.pattern.plain(seq_len) and self.backend == "sdpa"
        kv = nh if masked else dims.n_kv_heads  # sdpa's mask repeats shared key/value heads; flex shares them
        return (2 * nh * hd + 2 * kv * hd + nh * hd) * storage.matmul  # q, k, v, output, its re-laid copy


class MHA(_HeadsAttention):
    """Multi-head attention: one key/value head per query head."""

    kind: Literal["mha"] = Field(description="Multi-head attention (every query head has its own key/value head).")

    def dims(self, d_model: int) -> AttentionDims:
        return self._dims(d_model, self.n_heads)


class GQA(_HeadsAttention):
    """Grouped-query attention: query heads share key/value heads in groups."""

    kind: Literal["gqa"] = Field(description="Grouped-query attention (Llama 2/3, Mistral).")
    n_kv_heads: int = Field(gt=0, description="Number of key/value heads; must divide n_heads. Fewer heads shrink the KV cache.")

    @model_validator(mode="after")
    def _kv_heads_divide(self) -> GQA:
        if self.n_heads % self.n_kv_heads:
            raise field_error(
                "n_kv_heads",
                f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})",
            )
        return self

    def dims(self, d_model: int) -> AttentionDims:
        return self._dims(d_model, self.n_kv_heads)


class MQA(_HeadsAttention):
    """Multi-query attention: all query heads share one key/value head."""

    kind: Literal["mqa"] = Field(description="Multi-query attention (one key/value head shared by all query heads).")

    def dims(self, d_model: int) -> AttentionDims:
        return self._dims(d_model, 1)
