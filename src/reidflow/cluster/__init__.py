"""Pseudo labels for unsupervised adaptation: sparse k-reciprocal Jaccard distances, DBSCAN on them
(or k-means), cluster centroids and purity / NMI / ARI. Shared by MMT+ and usable on its own."""

from reidflow.cluster.camera import center_per_camera
from reidflow.cluster.jaccard import jaccard_distance
from reidflow.cluster.neighbours import nearest_neighbours
from reidflow.cluster.pseudo_labels import (
    PseudoLabelConfig,
    PseudoLabels,
    adaptive_eps,
    cluster_centroids,
    clustering_metrics,
    dbscan_labels,
    kmeans_labels,
    pseudo_labels,
)

__all__ = [
    "PseudoLabelConfig",
    "PseudoLabels",
    "adaptive_eps",
    "center_per_camera",
    "cluster_centroids",
    "clustering_metrics",
    "dbscan_labels",
    "jaccard_distance",
    "kmeans_labels",
    "nearest_neighbours",
    "pseudo_labels",
]
