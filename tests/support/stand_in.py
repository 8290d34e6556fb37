"""A deterministic stand-in for the engine: paths that depend only on the context's last close and mean volume
(what the golden run of test_pinned_outputs saw), shared by the tests that replay the real QQQ bars."""
import numpy as np


def stand_in_paths(last_close: float, mean_volume: float, n: int, h: int) -> np.ndarray:
    """Paths that depend only on the context's last close and mean volume (what the golden run's stand-in saw)."""
    rng = np.random.default_rng(1234)
    close = last_close * np.exp(np.cumsum(rng.normal(0.0, 4e-4, (n, h)), axis=1))
    open_ = np.concatenate([np.full((n, 1), last_close), close[:, :-1]], axis=1)
    wick = np.abs(rng.normal(0.0, 2e-4, (n, h, 2))) * last_close
    volume = mean_volume * np.exp(rng.normal(0, 0.3, (n, h)))
    return np.stack([open_, np.maximum(open_, close) + wick[..., 0], np.minimum(open_, close) - wick[..., 1], close,
                     volume, volume * close], axis=-1)


class StandIn:
    model_revision = tokenizer_revision = None
    device, max_context = "cpu", 512

    def sample_batch(self, values, x_stamp, y_stamp, n_paths, seeds=None, **_):
        return np.stack([stand_in_paths(float(v[-1, 3]), float(v[:, 4].mean()), n_paths, len(y))
                         for v, y in zip(values, y_stamp)])
