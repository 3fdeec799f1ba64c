"""A Hugging Face LlamaForCausalLM (tiny config, random weights, nothing downloaded)."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from coreai_opt_gpu import ExportBackend
from coreai_opt_gpu.palettization import KMeansPalettizer, KMeansPalettizerConfig
from tests.test_palettizer import blocks_distinct, palettized_states

transformers = pytest.importorskip("transformers")


def tiny_llama(seed=0):
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def test_llama_prepare_generate_state_and_finalize(tmp_path):
    config = KMeansPalettizerConfig.presets.w4(group_size=16)
    tokens = torch.randint(0, 128, (2, 12))
    model = tiny_llama()
    with torch.no_grad():
        reference = model(tokens).logits
    palettizer = KMeansPalettizer(model, config)
    palettizer.prepare((tokens,))
    states = palettized_states(model)
    # q/k/v/o, gate/up/down of both layers and the head: 2 * 7 + 1 (the embedding stays dense,
    # as in coreai_opt: only a module_state_spec reaches it)
    assert len(states) == 15 and "lm_head.weight" in states  # embeddings: module_state_spec
    for name, fake in states.items():
        module_name, state = name.rsplit(".", 1)
        weight = getattr(model.get_submodule(module_name), state)
        assert blocks_distinct(fake, weight) <= 16, name
    with torch.no_grad():
        logits = model(tokens).logits
        generated = model.generate(tokens[:1, :4], max_new_tokens=5, do_sample=False)
    assert float((logits - reference).norm() / reference.norm()) < 0.25
    assert generated.shape == (1, 9)

    fresh = tiny_llama(seed=1)
    KMeansPalettizer(fresh, config).prepare((tokens,))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(tokens).logits, logits)

    palettizer.finalize(backend=ExportBackend.Torch)
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, logits)
    assert palettizer.report.weights == 15 and palettizer.report.bits_per_weight < 4.5
    path = tmp_path / "llama.safetensors"
    save_file(model.state_dict(), str(path))
    assert path.stat().st_size < 0.25 * sum(p.numel() * 4 for p in tiny_llama().parameters())
    assert set(load_file(str(path))) == set(model.state_dict())
