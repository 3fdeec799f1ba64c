"""Weights a config addresses that `prepare` leaves dense, and why (nothing is skipped silently).

A weight is *addressed* when its module has a config whose spec dicts name it with a spec
(`module_state_spec`, `op_state_spec`, an `op_type_config` or `op_name_config` entry; by its
attribute name or "*"). coreai_opt palettizes a tensor only when a palettizable op (linear,
conv*, conv_transpose*, multi_head_attention_forward) passes it, or through `module_state_spec`
when the forward uses it at all; so an addressed weight of two or more dimensions stays dense
when
- only other functions use it (nn.Embedding, nn.EmbeddingBag, nn.Bilinear, nn.LSTM / nn.GRU
  (whose fused op takes its weights as a list), torch.matmul / einsum / @ on a bare
  parameter, ...),
- the forward of the example inputs does not use it, or no example inputs were given and its
  module is not a standard layer (functional uses are only found by a forward),
- it is palettized already (a finalized model prepared again: left as it is, as coreai_opt
  does).
`skipped_weights` lists those as (module, parameter, why); `prepare` warns once with all of
them. Weights whose spec is None, and incompatible shapes (their own warning), are not listed;
nor are 1-D tensors (biases, norm scales), which specs address by "*" or "weight" as a matter
of course.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu.config.resolver import last_matching, module_configs
from coreai_opt_gpu.config.trace import PALETTIZABLE_OPS, OpTrace, is_optimizable
from coreai_opt_gpu.palettization.targets import WeightTarget

PALETTIZABLE_NAMES = ", ".join(sorted(set(PALETTIZABLE_OPS.values())))
MAX_LISTED = 20


def addresses(module_config: Any, name: str) -> str | None:
    """How a module config gives the tensor `name` a spec (not None): "module_state_spec",
    "op" (op_state_spec, op_type_config or op_name_config), or None."""
    spec, found = last_matching(module_config.module_state_spec, [name])
    if found:
        return None if spec is None else "module_state_spec"
    dicts = [module_config.op_state_spec]
    dicts += [c.op_state_spec for c in module_config.op_type_config.values()]
    dicts += [c.op_state_spec for c in module_config.op_name_config.values()]
    for specs in dicts:
        spec, found = last_matching(specs, [name])
        if found and spec is not None:
            return "op"
    return None


def _is_palettization(layer: nn.Module) -> bool:
    """A palettization parametrization of ours: fake (prepare), packed (Torch finalize) or
    coreai-torch's layers (CoreAI finalize; only when coreai-torch is installed)."""
    from coreai_opt_gpu.palettization.finalize import PackedPalettize
    from coreai_opt_gpu.palettization.finalize_coreai import coreai_layers
    from coreai_opt_gpu.palettization.parametrization import FakePalettize

    if isinstance(layer, (FakePalettize, PackedPalettize)):
        return True
    try:
        return isinstance(layer, coreai_layers())
    except ValueError:  # coreai-torch is not installed: none of its layers can be here
        return False


def _palettization_modules(model: nn.Module) -> tuple[set[int], dict[int, list[tuple[str, str]]]]:
    """ids of modules inside parametrization lists; id(module) -> (state, class name) of each
    palettization parametrization on it."""
    inside: set[int] = set()
    palettized: dict[int, list[tuple[str, str]]] = {}
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for state, chain in module.parametrizations.items():
            inside.update(id(m) for m in chain.modules())
            kinds = [type(p).__name__ for p in chain if _is_palettization(p)]
            if kinds:
                palettized.setdefault(id(module), []).append((state, kinds[0]))
    return inside, palettized


def skipped_weights(
    model: nn.Module, config: Any, trace: OpTrace, targets: list[WeightTarget]
) -> list[tuple[str, str, str]]:
    """(module, parameter, why) of addressed weights left dense (see module docstring)."""
    choices = module_configs(config, model)
    targeted = {id(t.tensor) for t in targets}
    inside, palettized = _palettization_modules(model)
    uses: dict[int, list] = {}
    for call in trace.calls:
        for tensor in call.tensors:
            uses.setdefault(id(tensor), []).append(call)
    skipped = []
    for name, module in model.named_modules():
        choice = choices.get(name)
        if choice is None or id(module) in inside:
            continue
        for state, kind in palettized.get(id(module), []):
            if addresses(choice.config, state):
                skipped.append((name, state, f"palettized already ({kind}); left as it is"))
        for state, tensor in (
            *module.named_parameters(recurse=False, remove_duplicate=False),
            *module.named_buffers(recurse=False, remove_duplicate=False),
        ):
            if not is_optimizable(tensor) or tensor.dim() < 2 or id(tensor) in targeted:
                continue
            how = addresses(choice.config, state)
            calls = uses.get(id(tensor), [])
            if how is None or any(c.op_type is not None for c in calls):
                continue  # not addressed, or a palettizable op decided (None, incompatible)
            if how == "module_state_spec" and calls:
                continue  # resolved through module_state_spec (None elsewhere, incompatible)
            skipped.append((name, state, _why(module, calls, trace)))
    return skipped


def _why(module: nn.Module, calls: list, trace: OpTrace) -> str:
    functions = sorted({c.function for c in calls})
    if functions:
        return (
            f"used only by {', '.join(functions)}, not a palettizable op ({PALETTIZABLE_NAMES}); "
            f"module_state_spec reaches it"
        )
    if trace.traced and isinstance(module, nn.RNNBase):
        return (
            f"{type(module).__name__} runs its weights in one fused op that takes them as a "
            f"list (not a palettizable op)"
        )
    if trace.traced:
        return "not used by the forward of the example inputs"
    return (
        f"no example inputs, and {type(module).__name__} is not a standard layer whose op "
        f"prepare knows; pass example_inputs so a forward finds how it is used"
    )


def skipped_summary(skipped: list[tuple[str, str, str]]) -> str:
    """One warning text for all skipped weights."""
    lines = [
        f"  {module or '<model>'}.{state}: {why}" for module, state, why in skipped[:MAX_LISTED]
    ]
    if len(skipped) > MAX_LISTED:
        lines.append(f"  ... and {len(skipped) - MAX_LISTED} more")
    return (
        f"{len(skipped)} weight(s) the config addresses are left dense, because no palettizable "
        f"op uses them:\n" + "\n".join(lines)
    )
