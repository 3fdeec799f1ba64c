"""Which tensors of a module feed which op: the sites configs name (op type, state name)."""

from __future__ import annotations

import torch
from torch import nn

# module class -> (op type, state name) of each tensor the module feeds to an op. Biases are
# listed too: configs name them ("bias", or "*"); the default config names only weights.
MODULE_STATES: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    **{
        cls: ((op, "weight"), (op, "bias"))
        for cls, op in (
            (nn.Linear, "linear"),
            (nn.Conv1d, "conv1d"),
            (nn.Conv2d, "conv2d"),
            (nn.Conv3d, "conv3d"),
            (nn.ConvTranspose1d, "conv_transpose1d"),
            (nn.ConvTranspose2d, "conv_transpose2d"),
            (nn.ConvTranspose3d, "conv_transpose3d"),
        )
    },
    nn.Embedding: (("embedding", "weight"),),
    # attention projects q, k, v with one linear call on in_proj_weight (or three, when the
    # key/value sizes differ); out_proj is an nn.Linear of its own
    nn.MultiheadAttention: tuple(
        ("linear", name)
        for name in (
            "in_proj_weight",
            "q_proj_weight",
            "k_proj_weight",
            "v_proj_weight",
            "in_proj_bias",
        )
    ),
}


def module_states(module: nn.Module) -> tuple[tuple[str, str], ...]:
    """(op type, state name) of the module's palettizable weights that exist."""
    for cls in type(module).__mro__:
        if cls in MODULE_STATES:
            return tuple(
                (op, state)
                for op, state in MODULE_STATES[cls]
                if isinstance(getattr(module, state, None), torch.Tensor)
            )
    return ()
