"""Checkpoints on disk: palettize safetensors shards into a finalized checkpoint (streamed,
resumable, on one process or a torch.distributed group) and load the result into a model."""

from coreai_opt_gpu.checkpoint.job import JobOptions, palettize_checkpoint
from coreai_opt_gpu.checkpoint.load import load_palettized, read_state_dict
from coreai_opt_gpu.checkpoint.shards import CheckpointError

__all__ = [
    "CheckpointError",
    "JobOptions",
    "load_palettized",
    "palettize_checkpoint",
    "read_state_dict",
]
