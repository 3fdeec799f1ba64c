"""Which ops a model calls, from which module, with which of its tensors: the sites configs name.

`trace_ops(model, example_inputs)` runs one forward under a `TorchFunctionMode` (eval mode,
no gradients, training flags restored, so no statistics move) and records, for every module
the forward enters (first visit only, as coreai_opt does), each torch function it calls
directly: its base name ("linear", "conv2d", "multi_head_attention_forward", "embedding"),
its call index within the module, and the model tensors (parameters or buffers, floating,
more than one element) among its arguments. Calls made inside another intercepted call
(F.linear inside F.multi_head_attention_forward) are not seen, as in coreai_opt.

`static_ops(model)` infers the same record from module types when no example inputs are given:
nn.Linear, nn.Conv*, nn.ConvTranspose* call their functional op with weight and bias,
nn.MultiheadAttention calls `multi_head_attention_forward` with its projections (including
`out_proj`'s, which is never called as a module), nn.Embedding calls `embedding`.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# function -> palettizable op type (coreai_opt's registry keys)
PALETTIZABLE_OPS: dict[Callable, str] = {
    F.linear: "linear",
    F.conv1d: "conv1d",
    F.conv2d: "conv2d",
    F.conv3d: "conv3d",
    F.conv_transpose1d: "conv_transpose1d",
    F.conv_transpose2d: "conv_transpose2d",
    F.conv_transpose3d: "conv_transpose3d",
    F.multi_head_attention_forward: "multi_head_attention_forward",
}
OPTIMIZABLE_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
MHA_STATES = (
    "in_proj_weight",
    "in_proj_bias",
    "bias_k",
    "bias_v",
    "out_proj.weight",
    "out_proj.bias",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
)


def is_optimizable(value: Any) -> bool:
    """A floating tensor of more than one element."""
    return (
        isinstance(value, torch.Tensor) and value.numel() > 1 and value.dtype in OPTIMIZABLE_DTYPES
    )


def function_name(func: Callable) -> str:
    """Base name of a torch function: F.linear -> 'linear'. A palettizable op's is its
    `__name__` (the same, tested), which spares torch's ~20 ms listing of overridable
    functions on the first prepare of a process."""
    if func in PALETTIZABLE_OPS:
        return func.__name__
    name = torch.overrides.resolve_name(func)
    if name is None:
        return getattr(func, "__name__", repr(func))
    return name.rsplit(".", 1)[-1]


@functools.cache
def _interceptable() -> frozenset[Any]:
    return frozenset(
        func
        for owner, funcs in torch.overrides.get_overridable_functions().items()
        if isinstance(owner, (type, types.ModuleType))
        for func in funcs
    )


@dataclass(frozen=True)
class OpCall:
    """One torch function call made directly by a module's forward."""

    module_name: str
    function: str  # base name, e.g. "linear"
    index: int  # how many calls of `function` this module made before this one
    op_type: str | None  # the palettizable op type, None for other functions
    tensors: tuple[torch.Tensor, ...]  # model tensors among the arguments (optimizable ones)

    @property
    def op_name(self) -> str:
        """'<module>.<function>' ('lm_head.linear'), '_<index>' from the second call on."""
        local = self.function if self.index == 0 else f"{self.function}_{self.index}"
        return f"{self.module_name}.{local}" if self.module_name else local


@dataclass
class OpTrace:
    """The calls of one forward (or the statically inferred ones)."""

    calls: list[OpCall] = field(default_factory=list)
    traced: bool = True


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.states = {
            id(t)
            for module in model.modules()
            for t in (
                *module.parameters(recurse=False),
                *module.buffers(recurse=False),
            )
        }
        self.stack: list[tuple[str, nn.Module]] = []
        self.traversed: set[int] = set()
        self.counts: dict[tuple[str, str], int] = {}
        self.trace = OpTrace()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.stack:
            name, module = self.stack[-1]
            if id(module) not in self.traversed and self._recordable(func, args, kwargs):
                self._record(name, func, args, kwargs)
        return func(*args, **kwargs)

    def _recordable(self, func: Callable, args: Sequence, kwargs: dict) -> bool:
        """Whether `_record` would keep the call: an interceptable torch function that is a
        palettizable op (all are interceptable) or reads a model tensor. The cheap tests come
        first: building the interceptable set costs ~20 ms once per process."""
        if func in PALETTIZABLE_OPS:
            return True
        values = (*args, *kwargs.values())
        reads_state = any(is_optimizable(v) and id(v) in self.states for v in values)
        return reads_state and func in _interceptable()

    def _record(self, module_name: str, func: Callable, args: Sequence, kwargs: dict) -> None:
        base = function_name(func)
        op_type = PALETTIZABLE_OPS.get(func)
        values = (*args, *kwargs.values())
        tensors = tuple(v for v in values if is_optimizable(v) and id(v) in self.states)
        if op_type is None and not tensors:
            return  # nothing to resolve; unsupported calls never name an op config
        index = self.counts.get((module_name, base), 0)
        if op_type is not None:
            self.counts[(module_name, base)] = index + 1
        self.trace.calls.append(OpCall(module_name, base, index, op_type, tensors))


def trace_ops(model: nn.Module, example_inputs: Sequence[Any]) -> OpTrace:
    """Record the ops of one forward of `example_inputs` (see the module docstring)."""
    recorder = _Recorder(model)
    handles = []
    for name, module in model.named_modules():

        def enter(m: nn.Module, inputs: Any, name: str = name) -> None:
            recorder.stack.append((name, m))

        def leave(m: nn.Module, inputs: Any, outputs: Any) -> None:
            recorder.stack.pop()
            recorder.traversed.add(id(m))

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), recorder:
            model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.train(training)
    return recorder.trace


_MODULE_OPS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Linear, "linear"),
    (nn.Conv1d, "conv1d"),
    (nn.Conv2d, "conv2d"),
    (nn.Conv3d, "conv3d"),
    (nn.ConvTranspose1d, "conv_transpose1d"),
    (nn.ConvTranspose2d, "conv_transpose2d"),
    (nn.ConvTranspose3d, "conv_transpose3d"),
)


def static_ops(model: nn.Module) -> OpTrace:
    """The calls standard modules make, inferred from their types (see the module docstring)."""
    trace = OpTrace(traced=False)
    skipped: set[int] = set()  # attention out_proj layers: their weights go with the attention
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            skipped.add(id(module.out_proj))
    for name, module in model.named_modules():
        if id(module) in skipped:
            continue
        if isinstance(module, nn.MultiheadAttention):
            tensors = (
                module.get_parameter(s) if "." in s else getattr(module, s) for s in MHA_STATES
            )
            trace.calls.append(
                OpCall(
                    name,
                    "multi_head_attention_forward",
                    0,
                    "multi_head_attention_forward",
                    tuple(t for t in tensors if is_optimizable(t)),
                )
            )
            continue
        if isinstance(module, nn.Embedding):
            if is_optimizable(module.weight):
                trace.calls.append(OpCall(name, "embedding", 0, None, (module.weight,)))
            continue
        for cls, op in _MODULE_OPS:
            if isinstance(module, cls):
                tensors = (module.weight, module.bias)
                trace.calls.append(
                    OpCall(name, op, 0, op, tuple(t for t in tensors if is_optimizable(t)))
                )
                break
    return trace
