"""Random-weight Kronos checkpoints for offline tests.

write_checkpoint_pair(root, shape, seed) builds the upstream reference networks (package `model`,
kronos-model-arch, test-only) with the published configurations and saves them with their own
save_pretrained, so the files have exactly the published layout (config.json + model.safetensors).
install_in_hub_cache(cache_dir, repo_id, src_dir) lays such a directory out like huggingface_hub's cache,
so that with HF_HUB_CACHE=cache_dir and HF_HUB_OFFLINE=1 a hub repo id resolves to it.
Shapes: the published "mini", "small", "base", and "tiny" (d_model 32, 2 layers) for fast plumbing tests.

Input helpers (the engine takes arrays; these build them the way a caller would): time_features(timestamps),
make_bars(n, horizon, seed, columns) -> (DataFrame, x_timestamp, y_timestamp) and
frame_inputs(df, x_timestamp, y_timestamp) -> (values [P, 6], x_stamp [P, 5], y_stamp [H, 5]).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import torch

# Predictor shapes of the published checkpoints (see the notes' table) and the tokenizer each pairs with.
PREDICTORS = {
    "mini": dict(n_layers=4, d_model=256, n_heads=4, ff_dim=512),
    "small": dict(n_layers=8, d_model=512, n_heads=8, ff_dim=1024),
    "base": dict(n_layers=12, d_model=832, n_heads=16, ff_dim=2048),
    "tiny": dict(n_layers=2, d_model=32, n_heads=2, ff_dim=64),  # for plumbing tests: milliseconds per path
}
TOKENIZER_GROUP = {"mini": 4, "small": 5, "base": 5, "tiny": 4}  # 2k vs base tokenizer (a training-only field)
TOKENIZER_SHAPE = {"tiny": dict(d_model=32, n_heads=2, ff_dim=64)}  # the published ones: 256, 4 heads, 512
HEAD_SCALE = 8.0  # random heads give near-uniform logits; sharpen them so sampling is peaked


def predictor_config(shape: str) -> dict:
    return dict(s1_bits=10, s2_bits=10, ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0,
                token_dropout_p=0.0, learn_te=True, **PREDICTORS[shape])


def tokenizer_config(shape: str) -> dict:
    size = TOKENIZER_SHAPE.get(shape, dict(d_model=256, n_heads=4, ff_dim=512))
    return dict(d_in=6, n_enc_layers=4, n_dec_layers=4, ffn_dropout_p=0.0, **size,
                attn_dropout_p=0.0, resid_dropout_p=0.0, s1_bits=10, s2_bits=10, beta=0.05, gamma0=1.0,
                gamma=1.1, zeta=0.05, group_size=TOKENIZER_GROUP[shape])


def write_checkpoint_pair(root: Path, shape: str = "small", seed: int = 0) -> tuple[Path, Path]:
    """Write random-weight predictor and tokenizer directories under root; return (model_dir, tokenizer_dir).

    The global torch RNG state is restored afterwards. Output heads are scaled by HEAD_SCALE so that greedy
    decoding is well separated and sampled paths are neither uniform noise nor degenerate.
    """
    from model import Kronos, KronosTokenizer  # the reference, installed only for tests

    root = Path(root)
    model_dir, tok_dir = root / f"Kronos-{shape}", root / f"Kronos-Tokenizer-{shape}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictor = Kronos(**predictor_config(shape))
        tokenizer = KronosTokenizer(**tokenizer_config(shape))
        with torch.no_grad():
            for proj in (predictor.head.proj_s1, predictor.head.proj_s2):
                proj.weight.mul_(HEAD_SCALE)
                proj.bias.normal_(0.0, 1.0)
    predictor.save_pretrained(model_dir)
    tokenizer.save_pretrained(tok_dir)
    return model_dir, tok_dir


def install_in_hub_cache(cache_dir: Path, repo_id: str, src_dir: Path, revision_hash: str = "0" * 40) -> None:
    """Copy src_dir's config.json and model.safetensors into cache_dir in huggingface_hub's cache layout.

    models--Org--Name/blobs/<sha256> holds the files, snapshots/<revision_hash>/ links to them and
    refs/main names the hash, which is what the hub code reads when HF_HUB_OFFLINE=1.
    """
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision_hash
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        src = Path(src_dir) / name
        digest = hashlib.sha256()
        with open(src, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        blob = repo / "blobs" / digest.hexdigest()
        if not blob.exists():
            shutil.copyfile(src, blob)
        link = snapshot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, snapshot))
        except OSError:  # no symlinks (e.g. Windows without developer mode): the hub also copies then
            shutil.copyfile(blob, link)
    (repo / "refs" / "main").write_text(revision_hash)


ALL_COLUMNS = ("open", "high", "low", "close", "volume", "amount")


def time_features(timestamps) -> np.ndarray:
    """Wall-clock (minute, hour, weekday Monday=0, day, month) of pandas timestamps, in their own time zone."""
    import pandas as pd

    idx = pd.DatetimeIndex(timestamps)
    return np.stack([idx.minute, idx.hour, idx.day_of_week, idx.day, idx.month], axis=-1).astype(np.int64)


def make_bars(n: int, horizon: int, seed: int, columns: tuple[str, ...] = ALL_COLUMNS):
    """Random-walk 5-minute bars: (DataFrame with `columns`, x_timestamp, y_timestamp) as pandas Series."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 0.5, n))
    open_ = close + rng.normal(0, 0.2, n)
    df = pd.DataFrame({"open": open_, "high": np.maximum(open_, close) + rng.uniform(0, 0.3, n),
                       "low": np.minimum(open_, close) - rng.uniform(0, 0.3, n), "close": close,
                       "volume": rng.uniform(1e4, 5e4, n)})
    df["amount"] = df["volume"] * close * rng.uniform(0.99, 1.01, n)
    stamps = pd.Series(pd.date_range("2024-03-01 09:30", periods=n + horizon, freq="5min"))
    return df[list(columns)], stamps[:n].reset_index(drop=True), stamps[n:].reset_index(drop=True)


def frame_inputs(df, x_timestamp, y_timestamp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DataFrame (open, high, low, close[, volume[, amount]]) + timestamps -> the sampler's arrays."""
    from kronos import complete_columns

    columns = [c for c in ALL_COLUMNS if c in df.columns]
    return complete_columns(df[columns].to_numpy()), time_features(x_timestamp), time_features(y_timestamp)
