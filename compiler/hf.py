"""Mapping tabula models to Hugging Face transformers' formats (config.json + state dict).

    Llama    mha / gqa / mqa, rope, rmsnorm, swiglu, attention and mlp biases both or either
    Mistral  the same with a sliding window and no biases
    DeepSeek-V3  mla with latent_norm (MoE off: every layer dense), rope, rmsnorm, swiglu

What has no equivalent there (GELU MLPs, LayerNorm, learned or no positions, NTK scaling,
QK-norm, MLA without latent norms...) is reported by `hf_problems`, one line per field.
This module never imports transformers: it builds plain dicts and tensors (write_hf saves them
with safetensors).
"""

from __future__ import annotations

import re

import torch

from tabula.schemas.model import MLA
from tabula.schemas.model import Model as ModelSpec


class ExportError(ValueError):
    """The model cannot be written in the asked format; `problems` lists what does not map."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def hf_architecture(spec: ModelSpec) -> str:
    """LlamaForCausalLM, MistralForCausalLM or DeepseekV3ForCausalLM, by the attention's shape."""
    if isinstance(spec.block.attention, MLA):
        return "DeepseekV3ForCausalLM"
    if spec.block.attention.window is not None:
        return "MistralForCausalLM"
    return "LlamaForCausalLM"


def hf_problems(spec: ModelSpec) -> list[str]:
    """What in the model graph has no Hugging Face equivalent, as 'model.<path>: why' lines."""
    attn, block = spec.block.attention, spec.block
    arch = hf_architecture(spec)
    problems = []
    if block.norm.kind != "rmsnorm":
        problems.append(f"model.block.norm.kind: {block.norm.kind} has no Hugging Face equivalent here (rmsnorm maps)")
    if block.mlp.kind != "swiglu":
        problems.append(f"model.block.mlp.kind: {block.mlp.kind} has no Hugging Face equivalent here (swiglu maps)")
    if spec.position.kind != "rope":
        problems.append(f"model.position.kind: {spec.position.kind} positions have no Hugging Face equivalent here (rope maps)")
    elif spec.position.scaling is not None and spec.position.scaling.kind != "linear":
        problems.append(f"model.position.scaling.kind: {spec.position.scaling.kind} scaling does not map (linear does)")
    if attn.qk_norm:
        problems.append("model.block.attention.qk_norm: QK-norm does not map to Llama, Mistral or DeepSeek-V3")
    if arch == "MistralForCausalLM" and (attn.bias or block.mlp.bias):
        problems.append("model.block.attention.window: Mistral (sliding window) has no biases; set bias: false")
    if arch == "DeepseekV3ForCausalLM":
        if not attn.latent_norm:
            problems.append("model.block.attention.latent_norm: MLA maps to DeepSeek-V3 only with latent_norm: true")
        if attn.window is not None:
            problems.append("model.block.attention.window: DeepSeek-V3 has no sliding window")
        if attn.bias and attn.q_latent is None:
            problems.append("model.block.attention.bias: DeepSeek-V3's direct query projection has no bias")
        if block.mlp.bias:
            problems.append("model.block.mlp.bias: DeepSeek-V3's MLP has no biases")
    return problems


def hf_config(spec: ModelSpec, vocab_size: int, *, bos_token_id: int | None = None, eos_token_id: int | None = None, pad_token_id: int | None = None) -> dict:
    """config.json contents for the model. Raises ExportError where the graph does not map."""
    problems = hf_problems(spec)
    if problems:
        raise ExportError(problems)
    attn, block = spec.block.attention, spec.block
    rope = {"rope_type": "default", "rope_theta": spec.position.theta}
    if spec.position.scaling is not None:
        rope = {"rope_type": "linear", "rope_theta": spec.position.theta, "factor": spec.position.scaling.factor}
    arch = hf_architecture(spec)
    config = {
        "architectures": [arch],
        "vocab_size": vocab_size,
        "hidden_size": spec.d_model,
        "intermediate_size": block.mlp.hidden,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": attn.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_seq_len,
        "initializer_range": spec.init.std,
        "rms_norm_eps": block.norm.eps,
        "tie_word_embeddings": spec.tie_embeddings,
        "rope_parameters": rope,
        "attention_dropout": 0.0,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if arch == "LlamaForCausalLM":
        config |= {"model_type": "llama", "head_dim": spec.head_dim, "attention_bias": attn.bias, "mlp_bias": block.mlp.bias}
    elif arch == "MistralForCausalLM":
        config |= {"model_type": "mistral", "head_dim": spec.head_dim, "sliding_window": attn.window}
    else:
        config |= {
            "model_type": "deepseek_v3",
            "q_lora_rank": attn.q_latent,
            "kv_lora_rank": attn.kv_latent,
            "qk_rope_head_dim": attn.rope_head_dim,
            "qk_nope_head_dim": spec.head_dim - attn.rope_head_dim,
            "v_head_dim": attn.v_head_dim if attn.v_head_dim is not None else spec.head_dim,
            "attention_bias": attn.bias,
            "rope_interleave": False,  # tabula rotates halves, as Llama does
            "first_k_dense_replace": spec.n_layers,  # every layer a dense MLP: no mixture of experts
            "moe_intermediate_size": block.mlp.hidden,
            "n_routed_experts": 1,
            "n_shared_experts": 1,
            "num_experts_per_tok": 1,
            "n_group": 1,
            "topk_group": 1,
            "num_nextn_predict_layers": 0,
        }
    return config


# tabula name -> Hugging Face name, for every parameter that maps one to one.
_RENAMES = [
    (r"^embed\.weight$", "model.embed_tokens.weight"),
    (r"^norm\.weight$", "model.norm.weight"),
    (r"^lm_head\.weight$", "lm_head.weight"),
    (r"^blocks\.(\d+)\.attn_norm\.weight$", r"model.layers.\1.input_layernorm.weight"),
    (r"^blocks\.(\d+)\.mlp_norm\.weight$", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"^blocks\.(\d+)\.attn\.([qkvo])_proj\.(weight|bias)$", r"model.layers.\1.self_attn.\2_proj.\3"),
    (r"^blocks\.(\d+)\.mlp\.(gate|up|down)\.(weight|bias)$", r"model.layers.\1.mlp.\2_proj.\3"),
    (r"^blocks\.(\d+)\.attn\.q_down\.(weight|bias)$", r"model.layers.\1.self_attn.q_a_proj.\2"),
    (r"^blocks\.(\d+)\.attn\.q_latent_norm\.weight$", r"model.layers.\1.self_attn.q_a_layernorm.weight"),
    (r"^blocks\.(\d+)\.attn\.q_up\.weight$", r"model.layers.\1.self_attn.q_b_proj.weight"),
    (r"^blocks\.(\d+)\.attn\.kv_latent_norm\.weight$", r"model.layers.\1.self_attn.kv_a_layernorm.weight"),
    (r"^blocks\.(\d+)\.attn\.kv_up\.weight$", r"model.layers.\1.self_attn.kv_b_proj.weight"),
]
# DeepSeek-V3 projects the kv latent and the shared rotary key with one matrix: rows [latent | rope].
_KV_DOWN = re.compile(r"^blocks\.(\d+)\.attn\.kv_down\.(weight|bias)$")


def hf_state_dict(spec: ModelSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """tabula's state dict (names as in compiler/model.py) renamed and reshaped for hf_config's
    architecture. Tensors are made contiguous and never shared (safetensors refuses aliases)."""
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight" and spec.tie_embeddings:
            continue  # transformers ties it to the embedding itself
        kv = _KV_DOWN.match(name)
        if kv:
            layer, kind = kv.groups()
            rope = state[f"blocks.{layer}.attn.k_rope.{kind}"]
            out[f"model.layers.{layer}.self_attn.kv_a_proj_with_mqa.{kind}"] = torch.cat([tensor, rope], dim=0)
            continue
        if re.match(r"^blocks\.\d+\.attn\.k_rope\.", name):
            continue  # folded into kv_a_proj_with_mqa above
        for pattern, replacement in _RENAMES:
            if re.match(pattern, name):
                out[re.sub(pattern, replacement, name)] = tensor.detach().clone().contiguous()
                break
        else:
            raise ExportError([f"parameter {name} has no Hugging Face name"])
    return out


def special_token_ids(tokenizer_json: dict, names: dict[str, str]) -> dict[str, int | None]:
    """The ids of special tokens (e.g. {"eos_token_id": "<|endoftext|>"}) in a parsed tokenizer.json;
    None for a token it does not have."""
    ids = {token["content"]: token["id"] for token in tokenizer_json.get("added_tokens", [])}
    vocab = tokenizer_json.get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        ids = {**vocab, **ids}
    return {field: ids.get(token) for field, token in names.items()}


def write_hf(
    out_dir,
    spec: ModelSpec,
    state: dict[str, torch.Tensor],
    vocab_size: int,
    *,
    tokenizer_json: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
) -> list[str]:
    """Writes config.json, model.safetensors and, given a tokenizer.json text, the tokenizer
    files into `out_dir` so that transformers' AutoModelForCausalLM / AutoTokenizer
    .from_pretrained(out_dir) load them offline. Returns the file names written.
    Raises ExportError (before writing anything) where the graph does not map."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if tokenizer_json is not None:
        names = {"eos_token_id": eos_token, "pad_token_id": pad_token}
        ids |= special_token_ids(json.loads(tokenizer_json), {k: v for k, v in names.items() if v is not None})
    config = hf_config(spec, vocab_size, **ids)
    tensors = hf_state_dict(spec, state)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file({name: t.float().cpu() for name, t in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    written = ["config.json", "model.safetensors"]
    if tokenizer_json is not None:
        (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": spec.max_seq_len}
        found = {"eos_token": (eos_token, ids["eos_token_id"]), "pad_token": (pad_token, ids["pad_token_id"])}
        tokenizer_config |= {name: token for name, (token, token_id) in found.items() if token_id is not None}
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
        written += ["tokenizer.json", "tokenizer_config.json"]
    return written
