"""A tiny Hugging Face LlamaForCausalLM checkpoint with random weights, built locally (no
download): for tests, benchmarks and the README's first command."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_llama(
    directory: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    intermediate: int = 176,
    vocab: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_size: str | int = "100KB",
    seed: int = 0,
    tie_word_embeddings: bool = False,
    pad_token_id: int | None = None,
) -> Path:
    """Save a random LlamaForCausalLM (config.json + sharded safetensors) to `directory`;
    with `pad_token_id` its embedding has that padding row (zero)."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=pad_token_id,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(dtype).eval()
    directory = Path(directory)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    return directory
