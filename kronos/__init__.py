"""Kronos forecasting engine: our own tokenizer/predictor networks and a KV-cached multi-path sampler."""
from .loading import CheckpointError
from .sampler import KronosPathSampler

__all__ = ["CheckpointError", "KronosPathSampler"]
