"""coreai_opt's `palettization.kmeans` import path: the k-means palettizer."""

from coreai_opt_gpu.palettization.palettizer import KMeansPalettizer

__all__ = ["KMeansPalettizer"]
