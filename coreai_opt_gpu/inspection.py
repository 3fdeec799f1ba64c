"""Inspect a model's ops and a prepared model's storage cost (coreai_opt's `inspection` names).

- `ModelInspector(model, example_inputs, execution_mode="eager", compressor=None)`: runs one
  forward (no gradients) under a `TorchFunctionMode` and records every torch function each
  module calls directly, named as configs name ops (`<module>.<function>[_i]`, the names
  `op_name_config` regexes match), with the module stack, the data flow between ops and the
  calling source line; `compressor=KMeansPalettizer` keeps the palettizable ops only.
  Graph mode (torch.export) is not built: `execution_mode="graph"` raises.
- `bits_per_weight(model)`: average storage bits per weight of a model, palettized weights
  at their compressed cost (indices, LUT, per-channel scale, LUT quantization parameters),
  fake-quantized weights at theirs, weights finalized for `ExportBackend.Torch` at the bits
  of what they store, every other parameter and buffer at its dtype's size.
"""

from __future__ import annotations

import linecache
import math
import re
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from coreai_opt_gpu.config.module_types import qualified_name
from coreai_opt_gpu.config.spec import CompressionSimulatorBase
from coreai_opt_gpu.config.trace import PALETTIZABLE_OPS, _interceptable, function_name
from coreai_opt_gpu.palettization.parametrization import FakePalettize
from coreai_opt_gpu.quantization.spec import QuantizationFormulation, QuantizationScheme

PREPARED_MARKS = ("_coreai_opt_gpu_prepared", "_coreai_opt_gpu_quantized")


class ExecutionMode(str, Enum):
    """How a model is inspected: eager (a forward of the module) or graph (torch.export)."""

    EAGER = "eager"
    GRAPH = "graph"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SourceFrame:
    """A source line that led to an op."""

    filename: str
    lineno: int
    function_name: str
    code_context: str


@dataclass(frozen=True)
class ModuleContext:
    """A module on an op's module stack: its name and fully qualified type."""

    module_name: str
    module_type: str


@dataclass(frozen=True)
class InputEdge:
    """An op input produced by `op` (its output number `output_idx`; None for a single one)."""

    op: OpInfo
    output_idx: int | None

    @property
    def op_name(self) -> str:
        return self.op.op_name

    @property
    def op_type(self) -> str | None:
        return self.op.op_type

    @property
    def is_state(self) -> bool:
        return self.op.is_state

    @property
    def module_stack(self) -> tuple[ModuleContext, ...]:
        return self.op.module_stack

    @property
    def inputs(self) -> tuple[InputEdge, ...]:
        return self.op.inputs

    @property
    def outputs(self) -> dict[int, tuple[OpInfo, ...]]:
        return self.op.outputs


@dataclass(eq=False)
class OpInfo:
    """One op: its config name, type (the compressor's op type, None when it has none),
    module stack (outermost first), source frames, inputs and consumers by output number;
    `is_state` marks a parameter or buffer read."""

    op_name: str
    op_type: str | None
    module_stack: tuple[ModuleContext, ...]
    source_frames: tuple[SourceFrame, ...]
    inputs: tuple[InputEdge, ...]
    outputs: dict[int, tuple[OpInfo, ...]]
    is_state: bool

    def __repr__(self) -> str:
        return f"OpInfo(op_name={self.op_name!r}, op_type={self.op_type!r})"

    def __eq__(self, other: object) -> bool:
        """Ops are identified by their (unique) name."""
        if not isinstance(other, OpInfo):
            return NotImplemented
        return self.op_name == other.op_name

    def __hash__(self) -> int:
        return hash(self.op_name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "op_name" and "op_name" in self.__dict__:
            raise AttributeError("OpInfo.op_name is immutable (it is the op's identity)")
        super().__setattr__(name, value)


@dataclass(frozen=True)
class BoundaryEdge:
    """An op at a module boundary, with the boundary tensor's index."""

    op: OpInfo
    index: int


@dataclass
class ModuleInfo:
    """A module of the inspected model: its ops and child modules."""

    module_name: str
    module_type: str
    child_modules: dict[str, ModuleInfo]
    ops: list[OpInfo]
    input_ops: dict[int, list[BoundaryEdge]]
    output_ops: dict[int, BoundaryEdge]

    def children(self) -> Iterator[ModuleInfo]:
        yield from self.child_modules.values()

    def named_children(self) -> Iterator[tuple[str, ModuleInfo]]:
        yield from self.child_modules.items()

    def modules(self) -> Iterator[ModuleInfo]:
        for _, module in self.named_modules():
            yield module

    def named_modules(self) -> Iterator[tuple[str, ModuleInfo]]:
        yield self.module_name, self
        for child in self.child_modules.values():
            yield from child.named_modules()

    def get_submodule(self, module_name: str) -> ModuleInfo:
        """The module of fully qualified name `module_name`; AttributeError otherwise."""
        for name, module in self.named_modules():
            if name == module_name:
                return module
        raise AttributeError(f"{self.module_name or 'model'} has no submodule {module_name!r}")

    def all_ops(self) -> list[OpInfo]:
        """Ops of this module and all its descendants."""
        return [op for module in self.modules() for op in module.ops]


@dataclass(frozen=True)
class ModelSummary:
    """The inspected ops, nested in the module hierarchy."""

    model: ModuleInfo
    mode: ExecutionMode


class _Discovery(TorchFunctionMode):
    """Records every op each module calls directly (first call of a module only)."""

    def __init__(self, model: nn.Module, keep: Any) -> None:
        super().__init__()
        self.keep = keep
        self.stack: list[tuple[str, nn.Module]] = []
        self.traversed: set[int] = set()
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        # id -> (tensor, producing op, output number); the tensor is held so ids stay unique
        self.producers: dict[int, tuple[torch.Tensor, OpInfo, int | None]] = {}
        self.ops: list[OpInfo] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.stack or func not in _interceptable():
            return out
        name, module = self.stack[-1]
        if id(module) in self.traversed or not self.keep(func):
            return out
        base = function_name(func)
        index = self.counts[(name, base)]
        self.counts[(name, base)] += 1
        local = base if index == 0 else f"{base}_{index}"
        edges = tuple(
            InputEdge(*self.producers[id(v)][1:])
            for v in (*args, *kwargs.values())
            if isinstance(v, torch.Tensor) and id(v) in self.producers
        )
        op = OpInfo(
            op_name=f"{name}.{local}" if name else local,
            op_type=PALETTIZABLE_OPS.get(func),
            module_stack=tuple(ModuleContext(n, qualified_name(type(m))) for n, m in self.stack),
            source_frames=_caller_frames(),
            inputs=edges,
            outputs={},
            is_state=False,
        )
        for edge in edges:
            index_key = 0 if edge.output_idx is None else edge.output_idx
            edge.op.outputs[index_key] = (*edge.op.outputs.get(index_key, ()), op)
        results = out if isinstance(out, (tuple, list)) else (out,)
        for i, value in enumerate(results):
            if isinstance(value, torch.Tensor):
                self.producers[id(value)] = (value, op, None if results is not out else i)
        self.ops.append(op)
        return out


def _caller_frames(limit: int = 3) -> tuple[SourceFrame, ...]:
    """The innermost user-code frames (outside torch and this package)."""
    frames = []
    frame = sys._getframe(2)
    while frame is not None and len(frames) < limit:
        filename = frame.f_code.co_filename
        if "/torch/" not in filename and "coreai_opt_gpu/inspection" not in filename:
            line = linecache.getline(filename, frame.f_lineno).strip()
            frames.append(SourceFrame(filename, frame.f_lineno, frame.f_code.co_name, line))
        frame = frame.f_back
    return tuple(frames)


class ModelInspector:
    """Ops of a model, for writing configs (see the module docstring).

    model: the module; example_inputs: one forward's inputs; execution_mode: "eager" (graph
    mode is not built); compressor: KMeansPalettizer (or Quantizer) to keep the ops it can
    compress; dynamic_shapes / export_with_no_grad: graph mode only (ignored with a warning).
    """

    _summary: ModelSummary

    def __init__(
        self,
        model: nn.Module,
        example_inputs: tuple[Any, ...] | None,
        execution_mode: ExecutionMode | str,
        compressor: type | None = None,
        dynamic_shapes: dict[str, Any] | tuple[Any] | list[Any] | None = None,
        export_with_no_grad: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected a torch.nn.Module, got {type(model).__name__}")
        try:
            mode = ExecutionMode(execution_mode)
        except ValueError:
            raise ValueError(
                f"execution_mode={execution_mode!r} is not valid; allowed: 'eager', 'graph'"
            ) from None
        if mode == ExecutionMode.GRAPH:
            raise NotImplementedError(
                "ModelInspector: graph mode (torch.export) is not built in coreai_opt_gpu; "
                "use execution_mode='eager'"
            )
        if example_inputs is None:
            raise ValueError("example_inputs are needed for eager inspection")
        if dynamic_shapes is not None or not export_with_no_grad:
            warnings.warn(
                "dynamic_shapes and export_with_no_grad apply to graph mode only; ignored",
                UserWarning,
                stacklevel=2,
            )
        keep = self._op_filter(compressor)
        self._summary = self._inspect(model, tuple(example_inputs), keep)

    @staticmethod
    def _op_filter(compressor: type | None) -> Any:
        if compressor is None:
            return lambda func: True
        from coreai_opt_gpu.palettization import KMeansPalettizer
        from coreai_opt_gpu.quantization import Quantizer

        if isinstance(compressor, type) and issubclass(compressor, (KMeansPalettizer, Quantizer)):
            return lambda func: func in PALETTIZABLE_OPS
        raise ValueError(
            f"Unsupported compressor class {getattr(compressor, '__name__', compressor)}. "
            f"Supported compressors: Quantizer, KMeansPalettizer."
        )

    @staticmethod
    def _inspect(model: nn.Module, example_inputs: tuple, keep: Any) -> ModelSummary:
        discovery = _Discovery(model, keep)
        handles = []
        infos: dict[str, ModuleInfo] = {}
        for name, module in model.named_modules():
            infos[name] = ModuleInfo(name, qualified_name(type(module)), {}, [], {}, {})
            if name:
                parent, _, child = name.rpartition(".")
                infos[parent].child_modules[child] = infos[name]

            def enter(m: nn.Module, inputs: Any, name: str = name) -> None:
                discovery.stack.append((name, m))

            def leave(m: nn.Module, inputs: Any, outputs: Any) -> None:
                discovery.stack.pop()
                discovery.traversed.add(id(m))

            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, always_call=True))
        try:
            with torch.no_grad(), discovery:
                model(*example_inputs)
        finally:
            for handle in handles:
                handle.remove()
        for op in discovery.ops:
            infos[op.module_stack[-1].module_name].ops.append(op)
        return ModelSummary(model=infos[""], mode=ExecutionMode.EAGER)

    @property
    def summary(self) -> ModelSummary:
        return self._summary

    def get_matched_ops_for_op_type(self, op_type: str) -> tuple[OpInfo, ...]:
        """Ops of type `op_type` ("linear", "conv2d", "multi_head_attention_forward", ...)."""
        return tuple(op for op in self._summary.model.all_ops() if op.op_type == op_type)

    def get_matched_ops_for_op_name(self, pattern: str) -> tuple[OpInfo, ...]:
        """Ops whose name fully matches the regex (as `op_name_config` keys match)."""
        compiled = _compile(pattern)
        return tuple(op for op in self._summary.model.all_ops() if compiled.fullmatch(op.op_name))

    def get_matched_ops_for_module_name(self, module_name: str) -> tuple[OpInfo, ...]:
        """Ops called inside a module whose name fully matches the regex."""
        compiled = _compile(module_name)
        return tuple(
            op
            for op in self._summary.model.all_ops()
            if any(compiled.fullmatch(m.module_name) for m in op.module_stack)
        )

    def get_matched_ops_for_module_type(self, module_type: type | str) -> tuple[OpInfo, ...]:
        """Ops called inside a module of exactly this class (or fully qualified name)."""
        key = qualified_name(module_type) if isinstance(module_type, type) else module_type
        return tuple(
            op
            for op in self._summary.model.all_ops()
            if any(m.module_type == key for m in op.module_stack)
        )

    def format_summary(self, colorize: bool | None = None) -> str:
        """The module tree with each module's ops, one line each (colorize: ANSI colors for
        op types; None = when writing to a terminal)."""
        color = sys.stdout.isatty() if colorize is None else colorize
        lines: list[str] = []

        def walk(module: ModuleInfo, depth: int) -> None:
            label = module.module_name.rpartition(".")[2] or "model"
            lines.append(f"{'  ' * depth}{label} ({module.module_type})")
            for op in module.ops:
                kind = f" [{op.op_type}]" if op.op_type else ""
                if color and kind:
                    kind = f"\033[36m{kind}\033[0m"
                lines.append(f"{'  ' * (depth + 1)}- {op.op_name}{kind}")
            for child in module.children():
                walk(child, depth + 1)

        walk(self._summary.model, 0)
        return "\n".join(lines)


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"Invalid regex pattern '{pattern}': {err}") from err


@dataclass
class BitsPerWeightResult:
    """bpw: total_bits / total_weights; per_module_map: each module's own average (modules
    without tensors left out); total_bits includes compression overhead."""

    bpw: float
    per_module_map: dict[str, float]
    total_bits: int
    total_weights: int

    def __repr__(self) -> str:
        return (
            f"BitsPerWeightResult(bpw={self.bpw:.4f}, total_bits={self.total_bits}, "
            f"total_weights={self.total_weights})"
        )


def _dense_bits(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size() * 8


def _palettized_bits(weight: torch.Tensor, fake: FakePalettize) -> int:
    """Indices (n_bits per vector), LUT entries (the LUT dtype, else the weight's), the
    per-channel scale (weight dtype) and, with a quantized LUT, a float32 scale (and an
    n_bits zero point when asymmetric) per block: coreai_opt's accounting."""
    spec, layout = fake.spec, fake.layout
    weight_bits = weight.element_size() * 8
    bits = weight.numel() // spec.cluster_dim * spec.n_bits
    lut_entries = layout.num_blocks * spec.lut_size * spec.cluster_dim
    bits += lut_entries * (spec.lut_qspec.n_bits if spec.lut_qspec else weight_bits)
    if spec.enable_per_channel_scale:
        bits += weight.shape[0] * weight_bits
    if spec.lut_qspec is not None:
        bits += layout.num_blocks * 32
        if spec.lut_qspec.qscheme == QuantizationScheme.ASYMMETRIC:
            bits += layout.num_blocks * spec.lut_qspec.n_bits
    return bits


def _quantized_bits(weight: torch.Tensor, fake: Any) -> int:
    """n_bits per element plus a scale per block (scale dtype, else the weight's) and an
    offset per block (asymmetric zero point: n_bits; minval: a float)."""
    spec = fake.spec
    blocks = max(1, fake.high.numel())
    weight_bits = weight.element_size() * 8
    scale_bits = spec.scale_dtype.itemsize * 8 if spec.scale_dtype is not None else weight_bits
    bits = weight.numel() * spec.n_bits + blocks * scale_bits
    if spec.qformulation == QuantizationFormulation.MINVAL:
        bits += blocks * weight_bits
    elif spec.qscheme == QuantizationScheme.ASYMMETRIC:
        bits += blocks * spec.n_bits
    return bits


def _compression_modules(model: nn.Module, name: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Modules that own tensors (parents first), without compression machinery
    (parametrizations, fake-palettize and fake-quantize modules)."""
    from coreai_opt_gpu.quantization.fake_quantize import FakeQuantize

    machinery = (parametrize.ParametrizationList, CompressionSimulatorBase, FakeQuantize)
    if isinstance(model, machinery):
        return
    yield name, model
    for child_name, child in model.named_children():
        if child_name == "parametrizations" and isinstance(child, nn.ModuleDict):
            continue
        yield from _compression_modules(child, f"{name}.{child_name}" if name else child_name)


def bits_per_weight(model: nn.Module) -> BitsPerWeightResult:
    """Average storage bits per weight of a dense, palettized or fake-quantized model (see
    the module docstring); tied tensors count once."""
    if isinstance(model, (torch.fx.GraphModule, torch.export.ExportedProgram)):
        raise NotImplementedError(
            f"Graph mode prepared models are not supported, got {type(model).__name__}"
        )
    from coreai_opt_gpu.palettization.finalize import PackedPalettize
    from coreai_opt_gpu.quantization.fake_quantize import FakeQuantize

    module_bits: dict[str, int] = defaultdict(int)
    module_weights: dict[str, int] = defaultdict(int)
    seen: set[int] = set()
    for name, module in _compression_modules(model):
        if parametrize.is_parametrized(module):
            for state, chain in module.parametrizations.items():
                original = chain.original
                if id(original) in seen:
                    continue
                seen.add(id(original))
                palettized = next((p for p in chain if isinstance(p, FakePalettize)), None)
                quantized = next((p for p in chain if isinstance(p, FakeQuantize)), None)
                packed = next((p for p in chain if isinstance(p, PackedPalettize)), None)
                weights = original.numel()
                if palettized is not None:
                    bits = _palettized_bits(original, palettized)
                elif quantized is not None:
                    bits = _quantized_bits(original, quantized)
                elif packed is not None:  # finalized: what is stored
                    bits = sum(_dense_bits(b) for b in packed.buffers())
                    weights = math.prod(packed.layout.shape)
                else:
                    raise NotImplementedError(
                        f"bits_per_weight cannot size the parametrization on "
                        f"'{name}.{state}': {[type(p).__name__ for p in chain]}"
                    )
                module_bits[name] += bits
                module_weights[name] += weights
        buffers = [b for n, b in module.named_buffers(recurse=False) if n not in PREPARED_MARKS]
        for tensor in (*module.parameters(recurse=False), *buffers):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            module_bits[name] += _dense_bits(tensor)
            module_weights[name] += tensor.numel()
    total_bits, total_weights = sum(module_bits.values()), sum(module_weights.values())
    return BitsPerWeightResult(
        bpw=total_bits / total_weights if total_weights else 0.0,
        per_module_map={
            n: bits / module_weights[n] for n, bits in module_bits.items() if module_weights[n]
        },
        total_bits=total_bits,
        total_weights=total_weights,
    )


__all__ = [
    "BitsPerWeightResult",
    "BoundaryEdge",
    "ExecutionMode",
    "InputEdge",
    "ModelInspector",
    "ModelSummary",
    "ModuleContext",
    "ModuleInfo",
    "OpInfo",
    "SourceFrame",
    "bits_per_weight",
]
