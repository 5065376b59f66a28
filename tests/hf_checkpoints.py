"""Tiny random Hugging Face transformers checkpoints, built locally (no download), for the import tests
(importable from any test: tests/ is on the path through its conftest.py).

    checkpoint(folder, "llama", num_key_value_heads=2) -> the transformers model, saved in `folder`
    with a word-level tokenizer.json of VOCAB tokens whose last two are <|endoftext|> and <|pad|>.
"""

from __future__ import annotations

from pathlib import Path

VOCAB = 97
EOS, PAD = "<|endoftext|>", "<|pad|>"

# Tiny sizes every architecture shares; a large initializer_range makes attention far from uniform, so
# a wrong rotation, mask or bias moves the logits well beyond the tolerance.
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
              max_position_embeddings=64, eos_token_id=VOCAB - 2, initializer_range=0.3)

CONFIGS = {
    "llama": "LlamaConfig",
    "mistral": "MistralConfig",
    "qwen2": "Qwen2Config",
    "deepseek_v3": "DeepseekV3Config",
}


def config(architecture: str, **changes):
    """A tiny transformers config of `architecture` (llama, mistral, qwen2, deepseek_v3)."""
    import transformers

    values = dict(COMMON)
    if architecture == "deepseek_v3":  # MLA, every layer dense, no multi-token prediction
        values |= dict(q_lora_rank=16, kv_lora_rank=12, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=12,
                       first_k_dense_replace=2, n_routed_experts=4, num_nextn_predict_layers=0)
    elif architecture in ("mistral", "qwen2"):
        values |= dict(num_key_value_heads=2)
    return getattr(transformers, CONFIGS[architecture])(**(values | changes))


def write_tokenizer(path: Path, size: int = VOCAB) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(size - 2)} | {EOS: size - 2, PAD: size - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([EOS, PAD])
    tokenizer.save(str(path))


def checkpoint(folder: Path, architecture: str, *, seed: int = 0, shard: str | None = None, **changes):
    """A random transformers model of `architecture` saved in `folder` (sharded at `shard`, e.g.
    "20KB"), its norm scales and biases moved away from 1 and 0 so that a swapped or dropped mapping
    of either shows; returns the model (eval mode)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config(architecture, **changes)).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.rand(param.shape, generator=generator) - 0.5)
            elif "norm" in name:
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    write_tokenizer(folder / "tokenizer.json")
    return model
