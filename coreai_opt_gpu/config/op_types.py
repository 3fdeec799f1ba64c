"""Op types that palettizer configs name (`op_type_config` keys).

coreai_opt 0.3.0 matches an op by the registry key of the function it calls: "linear",
"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d" and
"multi_head_attention_forward" (nn.MultiheadAttention's projections). Its documentation shows
aten spellings ("aten.linear.default"), which its code silently never matches; we follow the
documentation: such a key names the short op type (and warns that coreai_opt would ignore it).
Any other key is accepted, as coreai_opt does, and warned about: it matches no op.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

OP_TYPES: tuple[str, ...] = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "multi_head_attention_forward",
)
# Ops our inventory knows that have no op-level palettization (reached by module_state_spec).
STATE_ONLY_OP_TYPES: tuple[str, ...] = ("embedding",)

# Palettization axis an op uses when a granularity says axis=None ([in, out, ...] weights -> 1).
DEFAULT_CHANNEL_AXIS: dict[str, int] = {
    op: 1 if "transpose" in op else 0 for op in OP_TYPES + STATE_ONLY_OP_TYPES
}


def short_op_type(name: str) -> str | None:
    """'aten.conv2d.default' -> 'conv2d' for a known op; None when `name` is not aten-spelled
    or names no known op."""
    parts = name.split(".")
    if parts[0] == "aten" and len(parts) in (2, 3) and parts[1] in OP_TYPES:
        return parts[1]
    return None


def normalize_op_type(name: str) -> str:
    """An op type as matched: aten spellings of known ops -> the short name, others as is."""
    return short_op_type(name) or name


def normalize_op_type_keys(mapping: Any, owner: str) -> Any:
    """{'aten.linear.default': cfg} -> {'linear': cfg}, warning that coreai_opt 0.3.0 would
    ignore the aten key; unknown op types kept, with a warning that they match no op."""
    if not isinstance(mapping, Mapping):
        return mapping
    normalized: dict[str, Any] = {}
    for key, value in mapping.items():
        short = short_op_type(key) if isinstance(key, str) else None
        if short is not None:
            warnings.warn(
                f"{owner}[{key!r}] is read as op type {short!r} (documented spelling); "
                f"coreai_opt 0.3.0 matches only {short!r} and would ignore this entry",
                UserWarning,
                stacklevel=2,
            )
        elif key not in OP_TYPES:
            warnings.warn(
                f"{owner}[{key!r}] matches no palettizable op; known op types: "
                f"{', '.join(OP_TYPES)} (coreai_opt 0.3.0 accepts and ignores it too)",
                UserWarning,
                stacklevel=2,
            )
        name = short or key
        if name in normalized:
            raise ValueError(f"{owner}: two keys name op type {name!r} ({key!r} and {name!r})")
        normalized[name] = value
    return normalized
