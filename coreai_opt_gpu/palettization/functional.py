"""Weights that reach an op only through a functional call (`F.linear(x, self.w)`).

One forward of the example inputs runs under a TorchFunctionMode that records the weight
argument of each palettizable functional op; those that are parameters of the model, and not
already a module's own weight, become extra (module, parameter, op type) sites. The forward
runs in eval mode without gradients and the modules' training flags are restored, so no
statistics move.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# functional op -> (op type, position of the weight argument)
FUNCTIONAL_OPS = {
    F.linear: ("linear", 1),
    F.conv1d: ("conv1d", 1),
    F.conv2d: ("conv2d", 1),
    F.conv3d: ("conv3d", 1),
    F.conv_transpose1d: ("conv_transpose1d", 1),
    F.conv_transpose2d: ("conv_transpose2d", 1),
    F.conv_transpose3d: ("conv_transpose3d", 1),
    F.embedding: ("embedding", 1),
}


class _RecordWeights(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FUNCTIONAL_OPS:
            op_type, position = FUNCTIONAL_OPS[func]
            weight = args[position] if len(args) > position else kwargs.get("weight")
            if isinstance(weight, torch.Tensor):
                self.calls.append((op_type, weight))
        return func(*args, **kwargs)


def functional_sites(model: nn.Module, example_inputs: Sequence) -> list[tuple[str, str, str]]:
    """(module name, parameter name, op type) of parameters used by functional ops, in call
    order, each once."""
    parameters = {}
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            parameters.setdefault(id(parameter), (module_name, name))
    modes = {module: module.training for module in model.modules()}
    model.eval()
    recorder = _RecordWeights()
    try:
        with torch.no_grad(), recorder:
            model(*example_inputs)
    finally:
        for module, training in modes.items():
            module.train(training)
    sites, seen = [], set()
    for op_type, weight in recorder.calls:
        owner = parameters.get(id(weight))
        if owner is not None and id(weight) not in seen:
            seen.add(id(weight))
            sites.append((*owner, op_type))
    return sites
