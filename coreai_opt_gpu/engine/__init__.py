"""Batched k-means over palettization blocks [G, N, D]; knows nothing of configs or modules."""

from coreai_opt_gpu.engine.cluster import Clustering, cluster_blocks

__all__ = ["Clustering", "cluster_blocks"]
