"""Datasets: readers of published layouts, the synthetic generator, shards, sampling, transforms."""
