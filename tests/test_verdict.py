"""The verdict against the random walk, from constructed loss arrays whose answer is known by construction."""
import numpy as np
import pytest

from evaluation import scoring, verdict


def _dm(a: np.ndarray, b: np.ndarray) -> dict:
    return scoring.diebold_mariano(a, b, h=3)


@pytest.fixture()
def rw_losses():
    rng = np.random.default_rng(5)
    return rng.gamma(2.0, 3.0, 600), rng.uniform(0.2, 0.3, 600)  # CRPS in bp, Brier losses


def test_a_model_far_worse_than_the_random_walk_says_so_first(rw_losses) -> None:
    crps_rw, brier_rw = rw_losses
    rng = np.random.default_rng(6)
    crps = crps_rw + 24 + rng.normal(0, 2, crps_rw.size)  # about 30 bp against 6: worse by construction
    brier = brier_rw + rng.normal(0, 0.01, brier_rw.size)  # no real Brier difference
    v = verdict.compare("kronos", crps.mean(), crps_rw.mean(), _dm(crps, crps_rw), brier.mean(), brier_rw.mean(),
                        _dm(brier, brier_rw))
    assert v["outcome"] == "worse"
    assert v["sentence"].startswith(f"kronos: the random walk is better (CRPS {crps.mean():.1f} vs "
                                    f"{crps_rw.mean():.1f} bp, p < 0.001; Brier ")


def test_better_indistinguishable_and_mixed(rw_losses) -> None:
    crps_rw, brier_rw = rw_losses
    rng = np.random.default_rng(8)
    better = crps_rw - 1.0 - np.abs(rng.normal(0, 0.1, crps_rw.size))
    same = crps_rw + rng.normal(0, 3, crps_rw.size) - 0.0
    worse_brier = brier_rw + 0.02
    args = dict(brier=brier_rw.mean(), brier_rw=brier_rw.mean(), dm_brier=_dm(brier_rw + rng.normal(0, .01, 600),
                                                                                brier_rw))
    assert verdict.compare("m", better.mean(), crps_rw.mean(), _dm(better, crps_rw), **args)["outcome"] == "better"
    same_dm = _dm(same, crps_rw)
    assert same_dm["p_value"] > 0.05  # the seed gives a draw where the test finds nothing, as it should mostly
    v = verdict.compare("m", same.mean(), crps_rw.mean(), same_dm, **args)
    assert v["outcome"] == "indistinguishable" and "not distinguishable from the random walk" in v["sentence"]
    mixed = verdict.compare("m", better.mean(), crps_rw.mean(), _dm(better, crps_rw), worse_brier.mean(),
                            brier_rw.mean(), _dm(worse_brier + rng.normal(0, 1e-3, 600), brier_rw))
    assert mixed["outcome"] == "mixed"


def test_verdict_lines_of_a_report_block() -> None:
    block = lambda crps, brier: {"close_end": {"crps_fair_bp": crps}, "p_up": {"raw": {"brier": brier}}}  # noqa: E731
    dm = {"crps_end": {"stat": 3.99, "p_value": 0.001}, "brier_p_up": {"stat": 0.5, "p_value": 0.6}}
    forecasters = {"random_walk": block(6.09, 0.25), "kronos": {**block(30.1, 0.26), "diebold_mariano_vs_random_walk": dm}}
    v = verdict.versus_random_walk(forecasters)
    assert [x["forecaster"] for x in v] == ["kronos"]
    assert v[0]["sentence"] == "kronos: the random walk is better (CRPS 30.1 vs 6.1 bp, p = 0.001; Brier 0.2600 vs 0.2500, p = 0.600)"
    assert verdict.lines([])[0].startswith("against the random walk: no random walk")
