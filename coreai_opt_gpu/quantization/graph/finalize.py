"""Graph-mode finalize: every fake-quantize node becomes real quantization ops.

Core AI (coreai-torch's ops, as coreai_opt's export):
- a weight (fake quantizer reading a parameter) -> its codes, scale and zero point (or
  minval) as buffers of the GraphModule and `coreai.constexpr_blockwise_shift_scale(codes,
  scale, zero_point, minval, input_dtype)`; scales keep the weight's rank ([blocks per axis]),
  e8m0 scales are stored as float8_e8m0fnu, float4 codes packed two per byte;
- an activation -> `coreai.quantize(x, scale, dtype, zero_point=/minval=, axis=)` then
  `coreai.dequantize(q, scale, ..., input_dtype=, output_dtype=)`, scales 0-D (per tensor) or
  1-D (per channel).

Torch: the same, with `coreai_opt_gpu.quantization.qdq`'s plain-PyTorch modules, so the model
exports with `torch.export` and stores integer (or float8) codes.

Dense weights that no node reads any more are replaced by empty tensors on the GraphModule.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from coreai_opt_gpu.config.spec import CompressionTargetTensor
from coreai_opt_gpu.export import ExportBackend
from coreai_opt_gpu.quantization.export_params import (
    coreai_activation_params,
    coreai_weight_tensors,
    finalize_qparams,
    torch_qdq_pair,
)
from coreai_opt_gpu.quantization.graph.prepare import fake_quantize_nodes
from coreai_opt_gpu.quantization.qdq import DequantizeTensor, QuantizedWeight, QuantizeTensor
from coreai_opt_gpu.quantization.spec import PerBlockGranularity, PerChannelGranularity
from coreai_opt_gpu.quantization.spec.fake_quantize import FakeQuantizeImplBase

COREAI_EXTRA = "pip install 'coreai-opt-gpu[coreai]'"


def coreai_ops() -> Any:
    """torch.ops.coreai, registered by the optional coreai-torch package."""
    try:
        import coreai_torch._compression.custom_layers  # noqa: F401 - registers the ops
    except ImportError as err:
        raise ValueError(
            f"backend=ExportBackend.CoreAI needs the optional coreai-torch package: {COREAI_EXTRA}"
        ) from err
    return torch.ops.coreai


def resolve_attr(model: torch.nn.Module, target: str) -> torch.Tensor:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _qparams(node: fx.Node, fake: FakeQuantizeImplBase) -> tuple[Any, Any, Any]:
    return finalize_qparams(fake, _where(node, fake))


def _where(node: fx.Node, fake: FakeQuantizeImplBase) -> str:
    return f"fake quantizer {node.name} ({fake.tensor_fqn})"


def _is_weight(node: fx.Node, fake: FakeQuantizeImplBase) -> bool:
    source = node.args[0]
    return (
        fake.quantization_target == CompressionTargetTensor.WEIGHT
        and isinstance(source, fx.Node)
        and source.op == "get_attr"
    )


def _register(model: fx.GraphModule, name: str, tensor: torch.Tensor | None) -> str | None:
    if tensor is None:
        return None
    model.register_buffer(name, tensor)
    return name


def _get_attr(model: fx.GraphModule, name: str | None) -> fx.Node | None:
    return None if name is None else model.graph.get_attr(name)


def _coreai_weight(model: fx.GraphModule, node: fx.Node, fake: FakeQuantizeImplBase) -> None:
    coreai = coreai_ops()
    source = node.args[0]
    dense = resolve_attr(model, str(source.target)).detach()
    weight = coreai_weight_tensors(fake, dense, _where(node, fake))
    codes, scale, zero_point, minval = weight.codes, weight.scale, weight.zero_point, weight.minval
    kwargs, input_dtype = weight.extra, weight.input_dtype
    base = str(source.target).replace(".", "_")
    names = [
        _register(model, f"{base}_quantized", codes),
        _register(model, f"{base}_scale", scale),
        _register(model, f"{base}_zero_point", zero_point),
        _register(model, f"{base}_minval", minval),
    ]
    with model.graph.inserting_before(node):
        args = (*(_get_attr(model, n) for n in names), input_dtype)
        decoded = model.graph.call_function(coreai.constexpr_blockwise_shift_scale, args, kwargs)
    node.replace_all_uses_with(decoded)


def _activation_axis(node: fx.Node, fake: FakeQuantizeImplBase, backend: str) -> int | None:
    granularity = fake.granularity
    if isinstance(granularity, PerBlockGranularity):
        raise ValueError(
            f"{backend} export of activation {node.name}: per-block activation quantization "
            f"has no 0-D/1-D scale; use per-tensor or per-channel, or ExportBackend.Torch"
        )
    if fake.dtype == torch.float4_e2m1fn_x2:
        raise ValueError(f"{backend} export of activation {node.name}: float4 is not supported")
    if isinstance(granularity, PerChannelGranularity):
        value = node.args[0].meta.get("val")
        rank = value.dim() if isinstance(value, torch.Tensor) else None
        return granularity.resolved_axis(rank) if rank is not None else granularity.axis
    return None


def _coreai_activation(model: fx.GraphModule, node: fx.Node, fake: FakeQuantizeImplBase) -> None:
    coreai = coreai_ops()
    axis = _activation_axis(node, fake, "Core AI")
    scale, zero_point, minval = coreai_activation_params(fake, axis, _where(node, fake))
    out_dtype = fake.export_dtype or torch.float32
    base = node.name
    scale_name = _register(model, f"{base}_scale", scale)
    zp_name = _register(model, f"{base}_zero_point", zero_point)
    minval_name = _register(model, f"{base}_minval", minval)
    with model.graph.inserting_before(node):
        scale_node = _get_attr(model, scale_name)
        offsets: dict[str, Any] = {}
        if zp_name is not None:
            offsets["zero_point"] = _get_attr(model, zp_name)
        if minval_name is not None:
            offsets["minval"] = _get_attr(model, minval_name)
        if axis is not None:
            offsets["axis"] = axis
        quantized = model.graph.call_function(
            coreai.quantize, (node.args[0], scale_node, fake.dtype), dict(offsets)
        )
        dequantize_kwargs = {"output_dtype": out_dtype, **offsets}
        if not fake.dtype.is_floating_point:
            dequantize_kwargs["input_dtype"] = fake.dtype
        dequantized = model.graph.call_function(
            coreai.dequantize, (quantized, scale_node), dequantize_kwargs
        )
    node.replace_all_uses_with(dequantized)


def _torch_modules(
    node: fx.Node, fake: FakeQuantizeImplBase
) -> tuple[QuantizeTensor, DequantizeTensor]:
    return torch_qdq_pair(fake, _where(node, fake))


def _torch_weight(model: fx.GraphModule, node: fx.Node, fake: FakeQuantizeImplBase) -> None:
    source = node.args[0]
    quantize, dequantize = _torch_modules(node, fake)
    codes = quantize(resolve_attr(model, str(source.target)).detach())
    name = f"{str(source.target).replace('.', '_')}_quantized"
    model.add_module(name, QuantizedWeight(codes, dequantize))
    with model.graph.inserting_before(node):
        decoded = model.graph.call_module(name, ())
    node.replace_all_uses_with(decoded)


def _torch_activation(model: fx.GraphModule, node: fx.Node, fake: FakeQuantizeImplBase) -> None:
    quantize, dequantize = _torch_modules(node, fake)
    model.add_module(f"{node.name}_quantize", quantize)
    model.add_module(f"{node.name}_dequantize", dequantize)
    with model.graph.inserting_before(node):
        codes = model.graph.call_module(f"{node.name}_quantize", (node.args[0],))
        values = model.graph.call_module(f"{node.name}_dequantize", (codes,))
    node.replace_all_uses_with(values)


def _release_dense_weights(model: fx.GraphModule, targets: list[str]) -> None:
    """Replace weights no get_attr node reads any more by empty tensors (memory freed; the
    original model's tensors are not touched)."""
    live = {str(n.target) for n in model.graph.nodes if n.op == "get_attr"}
    for target in dict.fromkeys(targets):
        if target in live:
            continue
        owner_path, _, name = target.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        old = getattr(owner, name)
        empty = torch.empty(0, dtype=old.dtype, device=old.device)
        if isinstance(old, torch.nn.Parameter):
            setattr(owner, name, torch.nn.Parameter(empty, requires_grad=False))
        else:
            owner.register_buffer(name, empty)


def finalize_graph(model: fx.GraphModule, backend: ExportBackend) -> fx.GraphModule:
    """Replace every fake-quantize node of `model` in place (see the module docstring)."""
    nodes = fake_quantize_nodes(model)
    if backend == ExportBackend.CoreAI:
        coreai_ops()
        if not nodes:
            raise ValueError(
                "Quantizer.finalize(backend=CoreAI): the model contains no fake quantization "
                "nodes to convert (the config quantized nothing)"
            )
        weight, activation = _coreai_weight, _coreai_activation
    else:
        weight, activation = _torch_weight, _torch_activation
    for node, fake in nodes:
        _qparams(node, fake)  # every quantizer is finalizable before the graph changes
    dense = []
    for node, fake in nodes:
        if _is_weight(node, fake):
            dense.append(str(node.args[0].target))
            weight(model, node, fake)
        else:
            activation(model, node, fake)
    targets = {str(node.target) for node, _ in nodes}
    for node, _ in nodes:
        model.graph.erase_node(node)
    for target in targets:
        delattr(model, target)
    model.graph.eliminate_dead_code()
    _release_dense_weights(model, dense)
    model.recompile()
    return model
