"""Kronos forecasting engine: our own tokenizer/predictor networks and a KV-cached multi-path sampler (numpy in,
numpy out; no pandas, no market knowledge: the caller computes the columns and time features)."""
from .config import CONTEXT_BY_REPO, CheckpointError
from .inputs import complete_columns
from .sampler import KronosPathSampler

__all__ = ["CONTEXT_BY_REPO", "CheckpointError", "KronosPathSampler", "complete_columns"]
