"""Clustering mechanisms shared by methods and evaluation: k-means (DeepCluster, the clustering evaluation),
PCA-whitening (DeepCluster) and Sinkhorn-Knopp equipartition (SeLa, SwAV)."""

from selfsup.cluster.kmeans import KMeansResult, kmeans, pca_whiten
from selfsup.cluster.sinkhorn import hard_labels, sinkhorn

__all__ = ["KMeansResult", "kmeans", "pca_whiten", "hard_labels", "sinkhorn"]
