"""Running upstream's regression protocol (tests/kronos_regression) on our engine: the runs the real-weights checks
compare. The judgement of those runs against the record is in record_check.py.

Upstream's protocol, read from its tests (in our words): the recorded outputs are greedy forecasts (top_k = 1,
top_p = 1, T = 1, one path) of the 8 bars after the first 512 or 256 rows of regression_input.csv, and two mean
squared errors of greedy 30-bar forecasts against the real open/high/low/close, averaged over the 4 origins that
`DataFrame.sample(n=4, random_state=123)` draws (then sorted) from rows context .. len - 30; each origin is
forecast from the `context` rows before it. Upstream normalises with float32 mean/std taken from
`DataFrame.values`, feeds the networks a window of at most 512 tokens, re-running the whole window every step
(so a 512-row context slides: the first rows drop out as bars are added), and decodes the last window once.

Three runs per origin:
- ours, float64 statistics: what a user gets. Where lookback + horizon fits max_context this is the engine itself
  (KronosPathSampler, KV-cached). Upstream's 512-row cases do not fit, and the engine refuses them by design (a KV
  cache cannot reproduce a sliding window), so there our networks, loaded by the same code, are driven the way
  upstream drives its own: `windowed_greedy`, one fresh prefill of the last 512 tokens per step.
- ours, float32 statistics: the same engine fed upstream's normalised input (see upstream_normalise).
- the reference (package `model`, kronos-model-arch, test-only) on CPU with its own float32 statistics, its
  tokens captured on the way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kronos import KronosPathSampler
from kronos.inputs import normalise
from kronos.sampler import sample_tokens
from support.kronos_checkpoints import time_features

MODEL_REPO, MODEL_REVISION = "NeoQuasar/Kronos-small", "901c26c1332695a2a8f243eb2f37243a37bea320"
TOKENIZER_REPO, TOKENIZER_REVISION = "NeoQuasar/Kronos-Tokenizer-base", "0e0117387f39004a9016484a186a908917e22426"
PINNED = ((MODEL_REPO, MODEL_REVISION), (TOKENIZER_REPO, TOKENIZER_REVISION))
FILES = ("config.json", "model.safetensors")
FETCH_COMMAND = "python tests/verify_install.py"

DATA = Path(__file__).resolve().parents[1] / "kronos_regression"
COLUMNS = ["open", "high", "low", "close", "volume", "amount"]
MSE_COLUMNS = ["open", "high", "low", "close"]
MAX_CONTEXT = 512
GREEDY_BARS = 8
MSE_BARS, MSE_ORIGINS, MSE_SEED = 30, 4, 123
CLIP, EPS = 5.0, 1e-5


def hub_cache() -> Path:
    """The hub cache our loader reads (kronos/loading.py: HF_HUB_CACHE when set, else huggingface_hub's own)."""
    from huggingface_hub import constants

    return Path(os.path.expanduser(os.environ.get("HF_HUB_CACHE", "")) or constants.HF_HUB_CACHE)


def cached_snapshots() -> tuple[dict[str, Path], list[str]]:
    """({repo: snapshot folder} of the pinned revisions found in the cache, [repo@revision missing]). No network."""
    from huggingface_hub import try_to_load_from_cache

    found, missing = {}, []
    for repo, revision in PINNED:
        paths = [try_to_load_from_cache(repo, f, cache_dir=hub_cache(), revision=revision) for f in FILES]
        if all(isinstance(p, str) for p in paths):
            found[repo] = Path(paths[0]).parent
        else:
            missing.append(f"{repo}@{revision}")
    return found, missing


def skip_reason(missing: list[str]) -> str:
    return (f"real weights not in the hub cache {hub_cache()}: {', '.join(missing)}; fetch them once with "
            f"`{FETCH_COMMAND}` (it downloads the pinned revisions, then runs pytest -m real_weights)")


def load_sampler(device: str, dtype: str = "float32") -> KronosPathSampler:
    """The pinned pair through the loader users run (hub ids, revisions, the hub cache; offline in tests)."""
    sampler = KronosPathSampler.from_pretrained(MODEL_REPO, TOKENIZER_REPO, device=device, max_context=MAX_CONTEXT,
                                                model_revision=MODEL_REVISION, tokenizer_revision=TOKENIZER_REVISION,
                                                dtype=dtype)
    assert (sampler.model_revision, sampler.tokenizer_revision) == (MODEL_REVISION, TOKENIZER_REVISION)
    return sampler


def input_bars() -> pd.DataFrame:
    return pd.read_csv(DATA / "regression_input.csv", parse_dates=["timestamps"])


def recorded(context: int) -> pd.DataFrame:
    return pd.read_csv(DATA / f"regression_output_{context}.csv", parse_dates=["timestamps"])


@dataclass
class Origin:
    """One forecast to make: the context rows and the timestamps of the bars to predict."""
    frame: pd.DataFrame  # context rows: timestamps + COLUMNS
    future: pd.DataFrame  # the bars to predict (timestamps; and their real values, for the MSE)

    @property
    def values(self) -> np.ndarray:
        return self.frame[COLUMNS].to_numpy(np.float64)

    @property
    def x_stamp(self) -> np.ndarray:
        return time_features(self.frame["timestamps"])

    @property
    def y_stamp(self) -> np.ndarray:
        return time_features(self.future["timestamps"])


def greedy_origin(bars: pd.DataFrame, context: int) -> Origin:
    return Origin(bars.iloc[:context].reset_index(drop=True),
                  bars.iloc[context : context + GREEDY_BARS].reset_index(drop=True))


def mse_origins(bars: pd.DataFrame, context: int) -> list[Origin]:
    """Upstream's draw: 4 rows of the valid region (every row with `context` rows before it and 30 after)."""
    valid = bars.iloc[context : len(bars) - MSE_BARS]
    rows = valid.sample(n=MSE_ORIGINS, random_state=MSE_SEED).sort_index().index
    return [Origin(bars.iloc[r - context : r].reset_index(drop=True),
                   bars.iloc[r : r + MSE_BARS].reset_index(drop=True)) for r in rows]


@dataclass
class Run:
    """One greedy forecast and every token behind it."""
    values: np.ndarray  # [H, 6] price units, float64
    context_s1: np.ndarray  # [P] tokens of the context
    context_s2: np.ndarray
    s1: np.ndarray  # [H] predicted tokens
    s2: np.ndarray


def upstream_normalise(origin: Origin) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upstream's float32 statistics -> (normalised clipped input [P, 6], mean, std + eps), all float32.

    Upstream takes `DataFrame.values` of the six float columns, which pandas hands out column-major, then numpy's
    float32 mean/std per column; the layout decides the summation order, and that order shows in the last bits,
    so it is kept here. The tests check this against the input the reference itself builds.
    """
    x = np.asfortranarray(origin.frame[COLUMNS].to_numpy(np.float64).astype(np.float32))
    mean, std = np.mean(x, axis=0), np.std(x, axis=0)
    return np.clip((x - mean) / (std + EPS), -CLIP, CLIP), mean, std + EPS


def fits_engine(origin: Origin) -> bool:
    return len(origin.frame) + len(origin.future) <= MAX_CONTEXT


@torch.inference_mode()
def engine_greedy(sampler: KronosPathSampler, x_norm: np.ndarray, origin: Origin) -> tuple[np.ndarray, ...]:
    """The KV-cached engine (run_normalised, as sample() runs it) on normalised input -> (values [H, 6] normalised
    float32, context s1, s2, predicted s1, s2)."""
    x = torch.from_numpy(np.ascontiguousarray(x_norm, dtype=np.float32))[None]
    horizon = len(origin.future)
    u = torch.full((1, 1, horizon, 2), 0.5)  # any uniform draws the arg-max under top_k = 1
    out = sampler.run_normalised(x, torch.from_numpy(origin.x_stamp)[None], torch.from_numpy(origin.y_stamp)[None],
                                 u, 1.0, 1, 1.0)
    c1, c2 = sampler.tokenizer.encode(x.to(sampler.device))
    return (out.values[0, 0].numpy(), c1[0].cpu().numpy(), c2[0].cpu().numpy(), out.s1[0, 0].numpy(),
            out.s2[0, 0].numpy())


def window_step(sampler: KronosPathSampler, s1: torch.Tensor, s2: torch.Tensor, stamps: torch.Tensor,
                s1_given: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step over the last max_context tokens [1, T] (stamps [1, T, 5]) through our networks, uncached ->
    (s1 logits [1, V], s2 logits [1, V] given s1_given, or given the greedy s1 when None)."""
    net, start = sampler.model, max(0, s1.shape[1] - sampler.max_context)
    try:
        h = net.prefill(s1[:, start:], s2[:, start:], stamps[:, start:])
        l1 = net.s1_logits(h).float()
        chosen = l1.argmax(-1) if s1_given is None else s1_given
        return l1, net.s2_logits(chosen, h).float()
    finally:
        net.clear_caches()


@torch.inference_mode()
def windowed_greedy(sampler: KronosPathSampler, x_norm: np.ndarray, origin: Origin) -> tuple[np.ndarray, ...]:
    """Upstream's sliding-window decoding with our networks: every step re-runs the last max_context tokens, and
    the last window is decoded once (the tokenizer's decoder is causal, so its window start matters too)."""
    dev, net, tok = sampler.device, sampler.model, sampler.tokenizer
    x = torch.from_numpy(np.ascontiguousarray(x_norm, dtype=np.float32))[None].to(dev)
    stamps = torch.from_numpy(np.concatenate([origin.x_stamp, origin.y_stamp]))[None].to(dev)
    c1, c2 = tok.encode(x)
    s1, s2 = c1, c2
    half = torch.full((1,), 0.5, device=dev)
    for _ in range(len(origin.future)):
        n = s1.shape[1]
        start = max(0, n - sampler.max_context)
        try:
            h = net.prefill(s1[:, start:], s2[:, start:], stamps[:, start:n])
            t1 = sample_tokens(net.s1_logits(h), half, 1.0, 1, 1.0)  # the engine's own top-k rule
            t2 = sample_tokens(net.s2_logits(t1, h), half, 1.0, 1, 1.0)
        finally:
            net.clear_caches()
        s1, s2 = torch.cat([s1, t1[:, None]], 1), torch.cat([s2, t2[:, None]], 1)
    start = max(0, s1.shape[1] - sampler.max_context)
    values = tok.decode(s1[:, start:], s2[:, start:])[0, -len(origin.future):]
    p = c1.shape[1]
    return (values.float().cpu().numpy(), c1[0].cpu().numpy(), c2[0].cpu().numpy(), s1[0, p:].cpu().numpy(),
            s2[0, p:].cpu().numpy())


def ours(sampler: KronosPathSampler, origin: Origin, statistics: str) -> Run:
    """Our greedy forecast with float64 statistics (kronos.inputs.normalise, what users get) or upstream's float32
    ones; denormalised in the precision of those statistics, as each side does."""
    if statistics == "float64":
        x_norm, mean, scale = (a[0] for a in normalise(origin.values[None]))
    elif statistics == "float32":
        x_norm, mean, scale = upstream_normalise(origin)
    else:
        raise ValueError(f"statistics must be float64 or float32, got {statistics!r}")
    drive = engine_greedy if fits_engine(origin) else windowed_greedy
    z, c1, c2, s1, s2 = drive(sampler, x_norm, origin)
    values = (z.astype(mean.dtype) * scale + mean).astype(np.float64)
    return Run(values, c1, c2, s1, s2)


def reference_available() -> bool:
    try:
        import model  # noqa: F401  (kronos-model-arch, installed by setup_venv.sh --test)
    except ImportError:
        return False
    return True


def reference_pair(snapshots: dict[str, Path]):
    """The reference's networks from the same cached files (CPU, eval mode)."""
    from model import Kronos, KronosTokenizer

    return (Kronos.from_pretrained(snapshots[MODEL_REPO]).eval(),
            KronosTokenizer.from_pretrained(snapshots[TOKENIZER_REPO]).eval())


def reference(pair, origin: Origin) -> tuple[Run, np.ndarray]:
    """The reference predictor's greedy forecast, exactly as upstream's tests call it (CPU, its own float32
    statistics) -> (Run with the tokens it encoded and drew, the normalised input it fed its networks)."""
    from model import KronosPredictor

    net, tok = pair
    predictor = KronosPredictor(net, tok, device="cpu", max_context=MAX_CONTEXT)
    seen: dict[str, object] = {}
    encode, decode, generate = tok.encode, tok.decode, predictor.generate

    def encoding(x, *args, **kwargs):
        seen["context"] = encode(x, *args, **kwargs)
        return seen["context"]

    def decoding(tokens, *args, **kwargs):  # called once, on the last window: its tail is the predicted tokens
        seen["window"] = [t.clone() for t in tokens]
        return decode(tokens, *args, **kwargs)

    def generating(x, *args, **kwargs):
        seen["input"] = np.array(x, dtype=np.float32)[0]
        return generate(x, *args, **kwargs)

    tok.encode, tok.decode, predictor.generate = encoding, decoding, generating
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(MSE_SEED)
            pred = predictor.predict(df=origin.frame[COLUMNS], x_timestamp=origin.frame["timestamps"],
                                     y_timestamp=origin.future["timestamps"], pred_len=len(origin.future), T=1.0,
                                     top_k=1, top_p=1.0, sample_count=1, verbose=False)
    finally:
        del tok.encode, tok.decode, predictor.generate
    horizon = len(origin.future)
    c1, c2 = (t[0].numpy() for t in seen["context"])  # type: ignore[union-attr]
    w1, w2 = (t[0, -horizon:].numpy() for t in seen["window"])  # type: ignore[union-attr]
    return Run(pred[COLUMNS].to_numpy(np.float64), c1, c2, w1, w2), seen["input"]  # type: ignore[return-value]


def logit_gap(sampler32: KronosPathSampler, origin: Origin, run32: Run, step: int, name: str, token: int) -> float:
    """float32's logit of its own choice minus its logit of `token` at `step` of run32 (s2: given run32's s1)."""
    dev = sampler32.device
    s1 = torch.from_numpy(np.concatenate([run32.context_s1, run32.s1[:step]]))[None].to(dev)
    s2 = torch.from_numpy(np.concatenate([run32.context_s2, run32.s2[:step]]))[None].to(dev)
    stamps = torch.from_numpy(np.concatenate([origin.x_stamp, origin.y_stamp[:step]]))[None].to(dev)
    with torch.inference_mode():
        l1, l2 = window_step(sampler32, s1, s2, stamps, torch.tensor([int(run32.s1[step])], device=dev))
    logits, own = (l1, run32.s1[step]) if name == "s1" else (l2, run32.s2[step])
    return float(logits[0, int(own)] - logits[0, token])
