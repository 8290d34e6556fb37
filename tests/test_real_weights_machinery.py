"""The real-weights checks (test_real_weights.py) where the real weights are absent: they skip cleanly, they CAN
fail, and their comparison machinery is right.

Stand-in checkpoints: random weights (the "tiny" shapes, for speed) laid out in a hub cache under the pinned repo
ids and revisions, so the checks load them through exactly the code they use for the real ones. Against
upstream's record they must fail and name the bar; against a record made by the reference package the way
upstream made its own (float32 statistics, CPU, greedy), they must pass, our engine drawing the reference's
tokens. The judging rules themselves are checked on fabricated runs with known differences.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from support import real_weights as rw
from support import record_check as rc
from support.kronos_checkpoints import install_in_hub_cache, write_checkpoint_pair
from support.real_cli_check import check_cli_forecast

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stand_in_hub(tmp_path_factory):
    if not rw.reference_available():  # it writes the checkpoints
        pytest.skip("needs the reference package (model): bash setup_venv.sh --test")
    root = tmp_path_factory.mktemp("stand_in")
    model, tokenizer = write_checkpoint_pair(root, "tiny", seed=23)
    install_in_hub_cache(root / "hub", rw.MODEL_REPO, model, rw.MODEL_REVISION)
    install_in_hub_cache(root / "hub", rw.TOKENIZER_REPO, tokenizer, rw.TOKENIZER_REVISION)
    return root / "hub"


@pytest.fixture(scope="module")
def one_thread():
    """Networks 32 wide: more threads only add hand-offs (ten times slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(stand_in_hub, one_thread):
    """For each greedy case (context 512 and 256): origin, ours (float64), ours (float32), reference, and the
    input the reference fed its networks."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(stand_in_hub))
        snapshots, missing = rw.cached_snapshots()
        assert not missing
        sampler, pair = rw.load_sampler("cpu"), rw.reference_pair(snapshots)
        bars = rw.input_bars()
        out = {}
        for context in (512, 256):
            o = rw.greedy_origin(bars, context)
            ref, fed = rw.reference(pair, o)
            out[context] = (o, rw.ours(sampler, o, "float64"), rw.ours(sampler, o, "float32"), ref, fed)
        origins = rw.mse_origins(bars, 256)
        out["mse"] = (origins, [rw.ours(sampler, o, "float64") for o in origins],
                      [rw.ours(sampler, o, "float32") for o in origins], [rw.reference(pair, o)[0] for o in origins])
        out["sampler"] = sampler
    return out


def start_pytest(args, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_CACHE=str(cache), KRONOS_TEST_DEVICE="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_real_weights.py", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_without_the_weights_every_check_skips_with_one_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    found, missing = rw.cached_snapshots()
    assert found == {} and missing == [f"{rw.MODEL_REPO}@{rw.MODEL_REVISION}",
                                       f"{rw.TOKENIZER_REPO}@{rw.TOKENIZER_REVISION}"]
    runs = [start_pytest(["-m", "real_weights"], tmp_path), start_pytest([], tmp_path)]  # both at once
    (selected, code), (default, default_code) = ((p.communicate(timeout=600)[0], p.returncode) for p in runs)
    assert code == 0, selected
    reasons = [line for line in selected.splitlines() if line.startswith("SKIPPED")]
    assert reasons and all("real weights not in the hub cache" in r for r in reasons), selected
    for text in (rw.MODEL_REPO, rw.MODEL_REVISION, rw.TOKENIZER_REPO, rw.TOKENIZER_REVISION, rw.FETCH_COMMAND):
        assert text in reasons[0]
    assert "5 skipped" in selected  # greedy x2, MSE x2, the CLI forecast
    # a plain run does not even look for the weights
    assert default_code == 0 and "5 skipped" in default, default
    assert "real-weights check, not selected" in default and "tests/verify_install.py" in default


@pytest.mark.parametrize("context", [512, 256])
def test_stand_in_weights_miss_the_record_and_the_failure_names_the_bar(runs, context):
    origin, ours64, ours32, ref, _ = runs[context]
    with pytest.raises(rc.RecordMismatch, match=r"float32 statistics misses the record: predicted bar 0 "
                                                r"\(2024-0\d-\d\d \d\d:\d\d\) open: [\d.]+ vs recorded [\d.]+.*"
                                                r"the reference misses it too: .*our tokens equal the reference's"):
        rc.judge_greedy(f"greedy from {context}", origin, rw.recorded(context), ours64, ours32, ref)


def test_stand_in_weights_miss_the_recorded_mse(runs):
    origins, ours64, ours32, ref = runs["mse"]
    with pytest.raises(rc.RecordMismatch, match=r"MSE [\d.]+ vs recorded 0.003741 .*the reference misses it too"):
        rc.judge_mse("mse", 0.003741, origins, ours64, ours32, ref)


def as_record(run: rw.Run, origin: rw.Origin, path: Path) -> pd.DataFrame:
    """The reference's forecast written and read back as upstream's generator writes its record (float32 values
    in a CSV with the predicted bars' timestamps)."""
    frame = pd.DataFrame(run.values.astype(np.float32), columns=rw.COLUMNS)
    frame.insert(0, "timestamps", origin.future["timestamps"])
    frame.to_csv(path, index=False)
    return pd.read_csv(path, parse_dates=["timestamps"])


@pytest.mark.parametrize("context", [512, 256])
def test_a_record_made_by_the_reference_is_reproduced(runs, context, tmp_path):
    origin, ours64, ours32, ref, fed = runs[context]
    np.testing.assert_array_equal(rw.upstream_normalise(origin)[0], fed)  # our float32 input is upstream's
    for name in ("context_s1", "context_s2", "s1", "s2"):  # same input, same greedy tokens
        np.testing.assert_array_equal(getattr(ours32, name), getattr(ref, name), err_msg=name)
    assert len(set(ours32.s1.tolist())) > 1, "a constant path would make the comparison weak"
    verdict = rc.judge_greedy("stand-in", origin, as_record(ref, origin, tmp_path / "rec.csv"), ours64, ours32, ref)
    assert all("float64 statistics" in note for note in verdict.notes)


def test_a_recorded_mse_made_by_the_reference_is_reproduced(runs):
    origins, ours64, ours32, ref = runs["mse"]
    expected = round(float(np.mean([rc.mse(r, o) for r, o in zip(ref, origins)])), 6)  # as upstream records it
    rc.judge_mse("stand-in mse", expected, origins, ours64, ours32, ref)
    with pytest.raises(rc.RecordMismatch, match="float32 statistics gives MSE"):
        rc.judge_mse("stand-in mse", expected + 3e-6, origins, ours64, ours32, ref)


def test_windowed_decoding_equals_the_engine_where_both_apply(runs, one_thread):
    """The sliding-window driver used for 512-row contexts is the KV-cached engine whenever no window slides."""
    origin = runs[256][0]
    x_norm = rw.upstream_normalise(origin)[0]
    a = rw.engine_greedy(runs["sampler"], x_norm, origin)
    b = rw.windowed_greedy(runs["sampler"], x_norm, origin)
    for x, y in zip(a[1:], b[1:]):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-5)


def test_bf16_check_plumbing_on_the_cpu(runs, one_thread):
    """The bf16 check's path on the CPU (bf16 itself needs CUDA): float32 against itself parts nowhere, and the
    logit gap it would ask for is 0 for float32's own token and positive for any other at a greedy step."""
    sampler, (origin, ours64) = runs["sampler"], runs[512][:2]
    assert rc.bf16_verdict(lambda dtype: sampler, "plumbing", [origin]).notes == []
    for step, name, own in ((0, "s1", ours64.s1[0]), (5, "s2", ours64.s2[5])):  # step 5: the window has slid
        other = (int(own) + 1) % 1024
        assert rw.logit_gap(sampler, origin, ours64, step, name, other) > 0.0
    for step in (0, 5):  # the logits it reads are the ones the greedy run chose from
        s1 = torch.from_numpy(np.concatenate([ours64.context_s1, ours64.s1[:step]]))[None]
        s2 = torch.from_numpy(np.concatenate([ours64.context_s2, ours64.s2[:step]]))[None]
        stamps = torch.from_numpy(np.concatenate([origin.x_stamp, origin.y_stamp[:step]]))[None]
        with torch.inference_mode():
            l1, l2 = rw.window_step(sampler, s1, s2, stamps)
        assert (int(l1.argmax()), int(l2.argmax())) == (ours64.s1[step], ours64.s2[step])


def test_cli_check_runs_on_stand_in_weights(stand_in_hub, one_thread, tmp_path, monkeypatch):
    """The CLI check's plumbing (flags, file names, summary keys) against the stand-in pinned checkpoint."""
    monkeypatch.setenv("HF_HUB_CACHE", str(stand_in_hub))
    check_cli_forecast("cpu", tmp_path)


def test_verify_install_without_the_hub_is_one_line_and_exit_5(tmp_path, monkeypatch, capsys):
    import verify_install

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # empty, and the tests run offline
    assert verify_install.main([]) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"verify_install: cannot fetch {rw.MODEL_REPO} at "
                                                         f"revision {rw.MODEL_REVISION}: "), err


def test_verify_install_runs_the_checks_on_what_it_finds(stand_in_hub, monkeypatch, capfd):
    """Weights already cached (offline): no download, then pytest -m real_weights; here only the CLI check, which
    passes on stand-in weights too (the record checks would fail on them, as they should)."""
    import verify_install

    monkeypatch.setenv("HF_HUB_CACHE", str(stand_in_hub))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a 32-wide network in the child: one thread is quickest
    assert verify_install.main(["-k", "cli"]) == 0
    out = capfd.readouterr().out
    assert f"{rw.MODEL_REPO}@{rw.MODEL_REVISION[:12]} is in {stand_in_hub}" in out and "1 passed" in out
    assert "every real-weights check passed" in out


# ---------------------------------------------------------------- the rules, on fabricated runs


@pytest.fixture
def fabricated():
    """Context 256 with runs that equal the record: tokens 0..P-1 mod 1024, record values."""
    origin = rw.greedy_origin(rw.input_bars(), 256)
    rec = rw.recorded(256)
    p, h = len(origin.frame), len(origin.future)
    tokens = np.arange(p) % 1024
    run = rw.Run(rec[rw.COLUMNS].to_numpy(np.float64), tokens, tokens[::-1].copy(), np.arange(h), np.arange(h) + 7)
    return origin, rec, run


def test_a_statistics_difference_is_reported_exactly(fabricated):
    origin, rec, run = fabricated
    s2 = run.context_s2.copy()
    s2[37] += 1
    ours64 = replace(run, context_s2=s2, values=run.values * (1 + 1e-3))
    verdict = rc.judge_greedy("fab", origin, rec, ours64, run, run)
    [note] = verdict.notes
    when = origin.frame["timestamps"].iloc[37].strftime("%Y-%m-%d %H:%M")
    assert f"context row 37 ({when}): s2 token {run.context_s2[37]} vs {s2[37]}" in note
    assert "predicted bar 0" in note and "open" in note  # where the forecast first misses
    with pytest.warns(rc.RecordNote, match="context row 37"):
        rc.report(verdict)


def test_other_differences_fail(fabricated):
    origin, rec, run = fabricated
    off = replace(run, values=run.values * (1 + 1e-4))
    with pytest.raises(rc.RecordMismatch, match="not the statistics"):  # same tokens, other values
        rc.judge_greedy("fab", origin, rec, off, run, run)
    s1 = run.s1.copy()
    s1[5] += 1
    flipped = replace(off, s1=s1)
    with pytest.raises(rc.RecordMismatch, match="not installed"):  # explained only with the reference present
        rc.judge_greedy("fab", origin, rec, flipped, run, None)
    with pytest.raises(rc.RecordMismatch, match=r"different tokens, first at predicted bar 5 .*: s1 token"):
        rc.judge_greedy("fab", origin, rec, run, run, replace(run, s1=s1))
    with pytest.raises(rc.RecordMismatch, match="float32 statistics misses the record: predicted bar 0.*the "
                                                "reference reproduces the record; our tokens equal"):
        rc.judge_greedy("fab", origin, rec, run, off, run)
    with pytest.raises(rc.RecordMismatch, match="reproduces the record; our tokens part from the reference's at "
                                                "origin 0: predicted bar 5"):
        rc.judge_greedy("fab", origin, rec, run, replace(off, s1=s1), run)


def test_bf16_may_part_from_float32_only_at_a_near_tie(fabricated):
    origin, _, run = fabricated
    assert rc.judge_bf16("bf16", [origin], [run], [run], lambda *a: 9.0).notes == []
    s2 = run.s2.copy()
    s2[3] += 1
    parted = replace(run, s2=s2, values=run.values * 1.01)
    asked = []

    def gap(k, i, name, token):
        asked.append((k, i, name, token))
        return 0.2

    [note] = rc.judge_bf16("bf16", [origin], [run], [parted], gap).notes
    assert asked == [(0, 3, "s2", s2[3])] and "predicted bar 3" in note and "gap 0.200" in note
    with pytest.raises(rc.RecordMismatch, match="no near tie"):
        rc.judge_bf16("bf16", [origin], [run], [parted], lambda *a: 2.0)
    with pytest.raises(rc.RecordMismatch, match="decodes other values"):
        rc.judge_bf16("bf16", [origin], [run], [replace(run, values=run.values * 1.01)], lambda *a: 0.0)
