"""Which exported (aten) ops graph mode quantizes, and how (coreai_opt 0.3.0's patterns).

- Weighted ops (conv1d..3d, conv_transpose1d..3d, linear, embedding): input 0, the weight and
  bias (states) and the output, which moves past a following BatchNorm and activation
  (`conv -> relu` quantizes the relu's output, not the conv's).
- N-ary ops (matmul, einsum, add, mul, sub): every floating input and the output (past a
  following activation, except for sub).
- Shared-observer ops (flatten, max/avg/adaptive pooling, mean, cat): output and inputs share
  one observer with the input when the input is quantized.
- Shape-only ops: clone, dropout, permute, slice, t and transpose pass their input's observer
  on (one fake quantizer before and after); expand, reshape, select, squeeze, unsqueeze and
  view pass on its scheme and float_range.
- Op-intrinsic ranges: relu, relu6, sigmoid, hardsigmoid, tanh and hardtanh outputs take the
  scheme their value range implies (relu: asymmetric), whatever the config says (integer
  dtypes; float dtypes keep the symmetric scheme), and propose that range as float_range; an
  observer shared with slots proposing other ranges covers their union (None: from data).

Op types (what `op_type_config` keys name) are the function the source code called, from the
node's `torch_fn` metadata (`F.linear` -> "linear", nn.MultiheadAttention's projections ->
"multi_head_attention_forward"); op names are the graph's node names ("linear_1").
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import fx

from coreai_opt_gpu.quantization.spec import QuantizationScheme

aten = torch.ops.aten

# aten op -> (op family, index of the data input, index of the weight, index of the bias)
WEIGHTED_OPS: dict[Callable, tuple[str, int, int, int | None]] = {
    aten.conv1d: ("conv", 0, 1, 2),
    aten.conv2d: ("conv", 0, 1, 2),
    aten.conv3d: ("conv", 0, 1, 2),
    aten.conv_transpose1d: ("conv_transpose", 0, 1, 2),
    aten.conv_transpose2d: ("conv_transpose", 0, 1, 2),
    aten.conv_transpose3d: ("conv_transpose", 0, 1, 2),
    aten.linear: ("linear", 0, 1, 2),
    aten.embedding: ("embedding", 1, 0, None),
}
# weight axis defaults for granularities given axis=None: (per-channel, per-block)
WEIGHT_AXES: dict[str, tuple[int, int]] = {
    "conv": (0, 1),
    "conv_transpose": (1, 0),
    "linear": (0, 1),
    "embedding": (0, 1),
}
BATCH_NORMS = (aten.batch_norm, aten._native_batch_norm_legit_no_training)
ACTIVATIONS = (
    aten.relu, aten.relu_, aten.relu6, aten.relu6_, aten.leaky_relu, aten.leaky_relu_,
    aten.silu, aten.silu_, aten.elu, aten.elu_, aten.celu, aten.celu_, aten.selu, aten.selu_,
    aten.mish, aten.mish_, aten.hardtanh, aten.hardtanh_, aten.hardswish, aten.hardswish_,
    aten.hardsigmoid, aten.hardsigmoid_, aten.gelu, aten.gelu_, aten.sigmoid, aten.sigmoid_,
    aten.log_sigmoid, aten.tanh, aten.tanh_,
)  # fmt: skip
NARY_OPS = (aten.matmul, aten.einsum, aten.add, aten.add_, aten.mul, aten.mul_)
NARY_OPS_WITHOUT_ACTIVATION = (aten.sub, aten.sub_)
SHARED_OBSERVER_OPS = (
    aten.flatten, aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.avg_pool1d,
    aten.avg_pool2d, aten.avg_pool3d, aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d,
    aten.adaptive_avg_pool3d, aten.mean, aten.cat, aten.concat,
)  # fmt: skip
# shape-only ops: rank-preserving ones share the observer of the tensor they pass through,
# rank-changing ones pass its scheme and float_range on to the next observer (coreai_opt's)
PASSTHROUGH_OPS = (
    aten.clone, aten.dropout, aten.feature_dropout, aten.permute, aten.slice, aten.t,
    aten.transpose,
)  # fmt: skip
RANK_CHANGING_OPS = (
    aten.expand, aten.reshape, aten.select, aten.squeeze, aten.unsqueeze, aten.view,
)  # fmt: skip
# output ranges ops know: (scheme for integer dtypes, float_range)
INTRINSIC_RANGES: dict[Callable, tuple[QuantizationScheme, tuple[float | None, float | None]]] = {
    aten.relu: (QuantizationScheme.ASYMMETRIC, (0.0, None)),
    aten.relu_: (QuantizationScheme.ASYMMETRIC, (0.0, None)),
    aten.relu6: (QuantizationScheme.ASYMMETRIC, (0.0, 6.0)),
    aten.relu6_: (QuantizationScheme.ASYMMETRIC, (0.0, 6.0)),
    aten.sigmoid: (QuantizationScheme.ASYMMETRIC, (0.0, 1.0)),
    aten.sigmoid_: (QuantizationScheme.ASYMMETRIC, (0.0, 1.0)),
    aten.hardsigmoid: (QuantizationScheme.ASYMMETRIC, (0.0, 1.0)),
    aten.hardsigmoid_: (QuantizationScheme.ASYMMETRIC, (0.0, 1.0)),
    aten.tanh: (QuantizationScheme.SYMMETRIC, (-1.0, 1.0)),
    aten.tanh_: (QuantizationScheme.SYMMETRIC, (-1.0, 1.0)),
}
HARDTANH = (aten.hardtanh, aten.hardtanh_)
# ops that decode a compressed weight: (namespace, op name); their outputs are states
COMPRESSED_STATE_OPS = {
    ("coreai", "lut_to_dense"),
    ("coreai", "constexpr_blockwise_shift_scale"),
    ("coreai", "sparse_to_dense"),
    ("coreai", "sparse_with_bitmask_to_dense"),
    ("coreai_opt_gpu", "lut_dequant"),  # our palettizer's prepared / Torch-finalized weights
    ("coreai_opt_gpu", "lut_dequant_packed"),
}


def packet(node: fx.Node) -> Callable | None:
    """The op overload packet a call_function node calls (aten.conv2d for conv2d.padding)."""
    if node.op != "call_function":
        return None
    return getattr(node.target, "overloadpacket", node.target)


def is_one_of(node: fx.Node, ops: tuple | dict) -> bool:
    return packet(node) in ops


def node_type(node: fx.Node) -> str | None:
    """The function the source called ("linear", "multi_head_attention_forward"), from the
    node's torch_fn metadata; None when it has none."""
    torch_fn = node.meta.get("torch_fn")
    if not isinstance(torch_fn, tuple) or len(torch_fn) != 2 or "." not in str(torch_fn[1]):
        return None
    return str(torch_fn[1]).split(".")[1]


def normalize_module_path(path: str) -> str:
    """nn_module_stack paths ("L['self'].layers[0]", "_modules['a']") -> "layers.0", "a"."""
    path = re.sub(r"^(?:L\['(?:self|fn)'\]\.|L\['args'\]\[\d+\]\.)", "", path)
    path = re.sub(
        r"_modules\['([^']+)'\]|\[(\d+)\]", lambda m: "." + (m.group(1) or m.group(2)), path
    )
    return re.sub(r"\.+", ".", path).strip(".")


def source_modules(node: fx.Node) -> list[str]:
    """Names of the modules the node's source ran in, outermost first ([] when unknown)."""
    stack = node.meta.get("nn_module_stack") or {}
    return [normalize_module_path(path) for path, _ in stack.values()]


def source_module(node: fx.Node) -> str | None:
    """The innermost module the node's source ran in."""
    modules = source_modules(node)
    return modules[-1] if modules else None


def is_floating(node: fx.Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.dtype.is_floating_point


def is_state(node: fx.Node) -> bool:
    """A parameter/buffer read, or an op decoding a compressed weight (palettized or already
    quantized: such states are never quantized again)."""
    if node.op == "get_attr":
        return True
    target = node.target
    return (
        node.op == "call_function"
        and isinstance(target, torch._ops.OpOverload)
        and (target.namespace, target._opname) in COMPRESSED_STATE_OPS
    )


def intrinsic_range(
    node: fx.Node,
) -> tuple[QuantizationScheme, tuple[float | None, float | None]] | None:
    """(scheme, float_range) the op's output always lies in, or None."""
    op = packet(node)
    if op in INTRINSIC_RANGES:
        return INTRINSIC_RANGES[op]
    if op in HARDTANH and len(node.args) >= 3:  # as coreai_opt: only explicit bounds
        low, high = float(node.args[1]), float(node.args[2])
        scheme = QuantizationScheme.SYMMETRIC if low == -high else QuantizationScheme.ASYMMETRIC
        return scheme, (low, high)
    return None
