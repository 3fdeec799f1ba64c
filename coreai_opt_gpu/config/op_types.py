"""Op types that configs can name, and their accepted spellings.

Short names ("linear", "conv2d") are canonical. The aten spellings that coreai_opt's
documentation shows ("aten.linear.default", "aten.conv_transpose2d.input") are accepted and
mapped to the short name; anything else is rejected with the list of known names.
"""

from __future__ import annotations

OP_TYPES: tuple[str, ...] = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "embedding",
)

# Palettization axis an op uses when a granularity says axis=None ([in, out, ...] weights -> 1).
DEFAULT_CHANNEL_AXIS: dict[str, int] = {op: 1 if "transpose" in op else 0 for op in OP_TYPES}


def normalize_op_type(name: str) -> str:
    """'aten.conv2d.default' -> 'conv2d'; raises ValueError for an unknown op type."""
    short = name
    if name.startswith("aten."):
        parts = name.split(".")
        short = parts[1] if len(parts) in (2, 3) else name
    if short not in OP_TYPES:
        raise ValueError(
            f"op type {name!r} is not known; known op types: {', '.join(OP_TYPES)} "
            f"(or their aten spellings, e.g. 'aten.linear.default')"
        )
    return short
