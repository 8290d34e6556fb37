"""finetune.py on real QQQ minute bars with a tiny random-weight checkpoint: the loss falls, early stopping, no
validation or test window reaches training, the checkpoint forecasts through the CLI, exact resume, the A/B
report, the bad inputs (exit 2, nothing written) and DDP with two gloo processes equal to one process."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import cli_kronos_prob_qqq as cli
import finetune
from app.config import load_config
from app.exits import ExitCode
from support.finetune_run import argv
from training import loop
from training.data import load_training_bars
from training.windows import build_splits

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # the fixtures one_thread, tiny and bars are in conftest.py


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tiny, bars, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ft"
    torch.set_num_threads(1)
    assert finetune.main(argv(tiny, bars, out, "--max-steps", "12", "--eval-every", "4")) == 0
    return out


def test_loss_falls_and_the_card_records_the_run(trained, tiny):
    card = json.loads((trained / "card.json").read_text())
    hist = card["training"]["history"]
    assert [h["step"] for h in hist] == [0, 4, 8, 12]
    val = [h["val_loss"] for h in hist]
    train = [h["train_loss"] for h in hist[1:]]
    assert val[-1] < val[0] - 0.2 and train[-1] < train[0]
    assert card["training"]["vanilla_val_loss"] == val[0] and card["training"]["best_val_loss"] == min(val)
    assert card["splits"]["train"]["sessions"][0] == "2025-05-01" and card["splits"]["test"]["sessions"] == [
        "2025-05-09", "2025-05-12"]
    assert card["settings"]["lr"] == 2e-3 and card["window"]["length"] == 40
    assert (trained / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # published layout: the source's config.json unchanged, every tensor of the source, and different weights
    assert json.loads((trained / "best" / "config.json").read_text()) == json.loads((tiny[0] / "config.json").read_text())
    best, vanilla = weights(trained / "best"), weights(tiny[0])
    assert set(best) == set(vanilla) and not torch.equal(best["head.proj_s1.weight"], vanilla["head.proj_s1.weight"])


def test_the_fine_tuned_checkpoint_forecasts_through_the_cli(trained, tiny, bars, tmp_path):
    out = tmp_path / "cli"
    args = ["--config", str(ROOT / "config.yaml"), "--source", "csv", "--csv", str(bars), "--model",
            str(trained / "best"), "--tokenizer", str(tiny[1]), "--out", str(out), "--asof", "2025-05-12T15:00:00Z",
            "--lookback", "30", "--horizon", "10", "--min-horizon", "5", "--n-samples", "4", "--seed", "1",
            "--device", "cpu", "--time-budget", "900", "-q"]
    assert cli.main(args) == 0
    summary = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    assert summary["model"]["model"] == str(trained / "best") and 0 <= summary["summary"]["p_up_10m"] <= 1


def test_the_best_folder_alone_forecasts_with_its_tokenizer_and_settings(trained, tiny, bars, tmp_path, caplog,
                                                                           monkeypatch):
    """--model OUT/best and nothing else of the model's: the shipped config.yaml says lookback 480, horizon 30 and
    the hub tokenizer, the record in OUT/best says what the run was trained with, and the record wins (offline)."""
    import logging

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    record = json.loads((trained / "best" / "trained_for.json").read_text())
    assert record["tokenizer"] == {"path": str(tiny[1].resolve())}
    assert record["settings"] == {"lookback": 30, "horizon": 10, "rth": True, "time_label": "start"}
    card = json.loads((trained / "card.json").read_text())
    assert card["best"]["tokenizer"] == str(tiny[1].resolve()) and card["best"]["trained_for"] == record["settings"]
    out = tmp_path / "cli"
    base = ["--config", str(ROOT / "config.yaml"), "--csv", str(bars), "--model", str(trained / "best"), "--out",
            str(out), "--asof", "2025-05-12T15:00:00Z", "--min-horizon", "5", "--n-samples", "4", "--seed", "1",
            "--device", "cpu", "--time-budget", "900", "-q"]
    assert cli.main(base) == 0
    summary = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    assert summary["model"]["tokenizer"] == str(tiny[1].resolve())
    assert summary["settings"]["lookback"] == 30 and "p_up_10m" in summary["summary"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # an explicit flag that contradicts the record wins, with a warning naming both values
    caplog.clear()
    assert cli.main(base + ["--lookback", "40"]) == 0
    told = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(told) == 1 and "--lookback 40" in told[0] and "lookback 30" in told[0] and "trained_for.json" in told[0]
    assert json.loads((out / "pred_summary_QQQ_latest.json").read_text())["settings"]["lookback"] == 40


def test_the_record_names_a_hub_tokenizer_by_id_and_revision(tmp_path):
    from kronos.loading import read_trained_for

    folder = tmp_path / "best"
    folder.mkdir()
    (folder / "trained_for.json").write_text(json.dumps({"tokenizer": {"id": "org/tok", "revision": "abc123"},
                                                         "settings": {"lookback": 64, "horizon": 15, "rth": False}}))
    assert read_trained_for(folder) == {"tokenizer": "org/tok", "tokenizer_revision": "abc123", "lookback": 64,
                                        "horizon": 15, "rth": False}
    cfg = load_config(ROOT / "config.yaml", {"model": str(folder), "tokenizer_revision": None})
    assert (cfg.tokenizer, cfg.tokenizer_revision, cfg.lookback, cfg.horizon, cfg.rth) == (
        "org/tok", "abc123", 64, 15, False)
    assert read_trained_for("NeoQuasar/Kronos-small") is None and read_trained_for(tmp_path) is None
    (folder / "trained_for.json").write_text("{not json")
    with pytest.raises(Exception, match="trained_for.json"):
        read_trained_for(folder)


def test_no_validation_or_test_window_reaches_training(tiny, bars):
    for cross in (False, True):
        cfg = load_config(None, {"source": "csv", "csv": str(bars), "sessions": 8, "lookback": 300, "horizon": 30,
                                 "cross_sessions": cross, "stride": 7}, script="finetune")
        data = load_training_bars(cfg)
        splits = build_splits(data.sessions, 2, 2, 330, 7, cross, "start")
        bounds = {}
        for name, split in splits.items():
            first, last = split.window_times(330)
            assert len(first) > 0
            bounds[name] = (first.min(), last.max())
            days = first.tz_convert("America/New_York").date, last.tz_convert("America/New_York").date
            if not cross:  # each window inside one session
                assert (days[0] == days[1]).all()
            else:  # windows of 330 bars at stride 7 must straddle some overnight gaps
                assert (days[0] != days[1]).any()
            assert set(map(str, days[0])) | set(map(str, days[1])) <= set(split.sessions)
        assert bounds["train"][1] < bounds["validation"][0] and bounds["validation"][1] < bounds["test"][0]
        assert splits["test"].sessions == ["2025-05-09", "2025-05-12"]


def test_early_stopping_stops_when_validation_stops_improving(tiny, bars, tmp_path):
    out = tmp_path / "es"
    # a learning rate far too high: training becomes unstable and validation stops improving within a few steps
    assert finetune.main(argv(tiny, bars, out, "--lr", "1.0", "--warmup-steps", "1", "--max-steps", "40",
                              "--eval-every", "1", "--patience", "2")) == 0
    t = json.loads((out / "card.json").read_text())["training"]
    val = [h["val_loss"] for h in t["history"]]
    assert t["stopped"] == "early_stopping" and t["steps"] < 40
    best = val.index(min(val))
    assert t["best_step"] == t["history"][best]["step"] and len(val) - 1 - best == 2  # patience 2
    assert all(v >= min(val) for v in val[best + 1:])
    # best/ holds the weights of the best step, not the last ones
    assert not torch.equal(weights(out / "best")["head.proj_s1.weight"], weights(out / "last")["head.proj_s1.weight"])


def test_interrupted_run_resumed_equals_the_uninterrupted_run(tiny, bars, tmp_path, monkeypatch):
    common = ("--max-steps", "6", "--eval-every", "2", "--dropout", "0.1", "--patience", "10")
    assert finetune.main(argv(tiny, bars, tmp_path / "a", *common)) == 0

    def interrupt(self):
        if self.step == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(loop.Trainer, "after_step", interrupt)
        assert finetune.main(argv(tiny, bars, tmp_path / "b", *common)) == ExitCode.INTERRUPTED
    assert torch.load(tmp_path / "b" / "last" / "state.pt", weights_only=True)["step"] == 2
    assert finetune.main(argv(tiny, bars, tmp_path / "b", *common)) == 0
    for folder in ("last", "best"):
        a, b = weights(tmp_path / "a" / folder), weights(tmp_path / "b" / folder)
        assert all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((tmp_path / "a" / "card.json").read_text())["training"]["history"]
    hb = json.loads((tmp_path / "b" / "card.json").read_text())["training"]["history"]
    assert ha == hb
    # other settings in the same folder: refused, not mixed into the run
    assert finetune.main(argv(tiny, bars, tmp_path / "b", "--max-steps", "7", "--eval-every", "2")) == 2


def test_ab_report_and_verdict(trained, tiny, bars, capsys):
    assert finetune.main(argv(tiny, bars, trained, "--ab", "--ab-every", "90", "--n-samples", "4",
                              "--ab-baselines", "random_walk", "--test-sessions", "2")) == 0
    ab = json.loads((trained / "ab" / "ab.json").read_text())
    report = json.loads((trained / "ab" / "report.json").read_text())
    assert [r["forecaster"] for r in ab["table"]] == ["random_walk", "vanilla", "finetuned"]
    assert ab["test_sessions"] == ["2025-05-09", "2025-05-12"]
    origins = pd.to_datetime(pd.read_csv(trained / "ab" / "per_origin.csv")["origin_utc"], utc=True)
    assert {d.isoformat() for d in origins.dt.tz_convert("America/New_York").dt.date} == {"2025-05-09", "2025-05-12"}
    # the verdict follows the documented rule, recomputed here from the report
    v, f = report["forecasters"]["vanilla"], report["forecasters"]["finetuned"]
    dm = f["diebold_mariano_vs_vanilla"]["crps_end"]
    rule = (f["close_end"]["crps_fair"] < v["close_end"]["crps_fair"] and dm["p_value"] is not None
            and dm["p_value"] < 0.05 and dm["stat"] < 0 and f["p_up"]["raw"]["brier"] <= v["p_up"]["raw"]["brier"])
    assert ab["adopt"] is rule
    card = json.loads((trained / "card.json").read_text())
    assert card["ab"]["adopt"] is rule and "Diebold-Mariano" in card["decision_rule"]
    # the plain thing first: both checkpoints against the random walk, in ab.json, the card and on stdout
    assert list(ab)[0] == "versus_random_walk" and list(card["ab"])[0] == "versus_random_walk"
    assert [x["forecaster"] for x in ab["versus_random_walk"]] == ["vanilla", "finetuned"]
    for x in ab["versus_random_walk"]:
        dm_rw = report["forecasters"][x["forecaster"]]["diebold_mariano_vs_random_walk"]["crps_end"]
        assert x["crps_dm_p"] == dm_rw["p_value"]
    out = capsys.readouterr().out
    assert out.index("against the random walk") < out.index("verdict:")


def mark_first_record(ab: Path) -> None:
    """Tag the A/B's first stored record: it stays only while the A/B resumes instead of starting over."""
    lines = (ab / "results.jsonl").read_text().splitlines(keepends=True)
    lines[0] = json.dumps({**json.loads(lines[0]), "kept": True}) + "\n"
    (ab / "results.jsonl").write_text("".join(lines))


def first_record(ab: Path) -> dict:
    return json.loads((ab / "results.jsonl").read_text().splitlines()[0])


def test_ab_reruns_with_other_settings_resumes_identical_ones_and_fresh_starts_it_over(trained, tiny, bars,
                                                                                          tmp_path, caplog):
    out = tmp_path / "ft"
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("ab"))

    def ab(every: str, *extra: str) -> int:
        return finetune.main(argv(tiny, bars, out, "--ab", "--ab-every", every, "--n-samples", "4",
                                  "--ab-baselines", "random_walk", *extra))

    def origin_times() -> set[str]:
        origins = pd.to_datetime(pd.read_csv(out / "ab" / "per_origin.csv")["origin_utc"], utc=True)
        return set(origins.dt.tz_convert("America/New_York").dt.strftime("%H:%M"))

    assert ab("90") == 0 and origin_times() == {"11:00", "12:30", "14:00", "15:30"}
    # other A/B settings: the A/B of the kept model simply runs again with them (it used to exit 2)
    assert ab("120") == 0 and origin_times() == {"11:30", "13:30", "15:30"} and "it starts over" in caplog.text
    assert json.loads((out / "ab" / "ab.json").read_text())["every"] == 120
    assert json.loads((out / "card.json").read_text())["ab"]["every"] == 120
    # the same settings again: resumed, the stored records kept
    mark_first_record(out / "ab")
    assert ab("120") == 0 and first_record(out / "ab").get("kept") is True
    # --ab --fresh: only the A/B starts over; the trained model and its card stay
    assert ab("120", "--fresh") == 0 and "kept" not in first_record(out / "ab")
    assert all(torch.equal(v, weights(trained / "best")[k]) for k, v in weights(out / "best").items())
    assert json.loads((out / "card.json").read_text())["training"]["best_step"] == \
        json.loads((trained / "card.json").read_text())["training"]["best_step"]


def test_damaged_last_checkpoint_is_one_line_error_naming_fresh(trained, tiny, bars, tmp_path, caplog):
    from safetensors.torch import save_file

    out = tmp_path / "ft"
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("ab"))
    last = weights(out / "last")
    last.pop("head.proj_s1.weight")
    save_file(last, str(out / "last" / "model.safetensors"))
    assert finetune.main(argv(tiny, bars, out, "--max-steps", "12", "--eval-every", "4")) == ExitCode.MODEL
    assert "missing tensor head.proj_s1.weight" in caplog.text and "--fresh" in caplog.text
    (out / "last" / "state.pt").write_bytes(b"not a torch file")
    assert finetune.main(argv(tiny, bars, out, "--max-steps", "12", "--eval-every", "4")) == ExitCode.MODEL
    assert "state.pt" in caplog.records[-1].getMessage() and "--fresh" in caplog.records[-1].getMessage()
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("extra, message", [
    (("--sessions", "4"), "too few sessions"),
    (("--lookback", "500", "--horizon", "30"), "longer than the model's context"),
    (("--out-file",), "is a file"),
])
def test_bad_input_exits_2_and_writes_nothing(tiny, bars, tmp_path, caplog, extra, message):
    out = tmp_path / "out"
    if extra == ("--out-file",):
        (tmp_path / "blocker").write_text("x")
        out, extra = tmp_path / "blocker" / "run", ()
    assert finetune.main(argv(tiny, bars, out, *extra)) == ExitCode.BAD_INPUT
    assert message in caplog.text
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) in ([], ["blocker"])


def run_rank(rank: int, world: int, port: int, args: list[str]) -> None:
    """One torchrun-style worker: the environment torchrun would set, then the script's own entry point."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    code = finetune.main(args)
    if code != 0:
        raise SystemExit(code)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_equal_one_process(tiny, bars, tmp_path):
    """Two DDP processes (gloo) with 4 windows each train exactly as one process with the global batch of 8."""
    import torch.multiprocessing as mp

    common = ("--max-steps", "3", "--eval-every", "3", "--dropout", "0", "--batch-size", "8")
    assert finetune.main(argv(tiny, bars, tmp_path / "one", *common)) == 0
    # forked workers start at once (torch and the data libraries are already imported), as torchrun's would run
    mp.start_processes(run_rank, args=(2, free_port(), argv(tiny, bars, tmp_path / "two", *common)), nprocs=2,
                       join=True, start_method="fork")
    card = json.loads((tmp_path / "two" / "card.json").read_text())
    assert card["processes"] == 2
    one, two = weights(tmp_path / "one" / "last"), weights(tmp_path / "two" / "last")
    assert not torch.equal(one["head.proj_s1.weight"], weights(tiny[0])["head.proj_s1.weight"])
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)


def test_tokenizer_fine_tuning_saves_a_loadable_pair(tiny, bars, tmp_path):
    from kronos.loading import load_pair

    out = tmp_path / "tok"
    assert finetune.main(argv(tiny, bars, out, "--train-tokenizer", "--max-steps", "2", "--eval-every", "2")) == 0
    trained_tok, source_tok = weights(out / "last" / "tokenizer"), weights(tiny[1])
    assert not torch.equal(trained_tok["embed.weight"], source_tok["embed.weight"])
    card = json.loads((out / "card.json").read_text())
    assert card["best"]["tokenizer"] == str(out / "best_tokenizer")
    load_pair(out / "best", out / "best_tokenizer")  # the published layout, both halves
    # the record points at the trained tokenizer relatively, so OUT may move as a whole
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    cfg = load_config(None, {"model": str(moved / "best")})
    assert cfg.tokenizer == str((moved / "best_tokenizer").resolve()) and cfg.lookback == 30


def test_readme_documents_the_finetune_keys():
    from app.config import FINETUNE_KEYS, reference_table

    text = (ROOT / "README.md").read_text()
    assert reference_table(FINETUNE_KEYS) in text and text.index("## Fine-tuning") < text.index("## Limitations")


def alpaca_run(tiny, out, fake, monkeypatch, secret: str) -> list[str]:
    """finetune.py's flags for a short run on the last 6 sessions from the fake Alpaca, with its keys set."""
    monkeypatch.setenv("ALPACA_KEY_ID", "AKFAKE0003")
    monkeypatch.setenv("ALPACA_SECRET_KEY", secret)
    monkeypatch.setenv("ALPACA_DATA_URL", fake.url)
    model, tok = tiny
    return ["--config", str(ROOT / "config.yaml"), "--source", "alpaca", "--model", str(model), "--tokenizer",
            str(tok), "--out", str(out), "--sessions", "6", "--val-sessions", "1", "--test-sessions", "1",
            "--lookback", "30", "--horizon", "10", "--stride", "30", "--batch-size", "8", "--max-steps", "2",
            "--eval-every", "2", "--warmup-steps", "1", "--no-progress", "--device", "cpu"]


def test_bars_from_alpaca_the_last_sessions(tiny, tmp_path, monkeypatch):
    """--source alpaca: the last K sessions up to now, fetched through alpaca-py from a fake server."""
    from support import simulated
    from support.fake_alpaca import FakeAlpaca, bars_page
    from marketdata import calendar as mcal

    now = pd.Timestamp.now(tz="UTC")
    sessions = mcal.recent_sessions(now, 6, True)
    frame = simulated.simulate_bars(sessions[0].date().isoformat(), 6, seed=5)

    fake = FakeAlpaca(lambda query: bars_page(frame, query))
    try:
        out = tmp_path / "alpaca"
        args = alpaca_run(tiny, out, fake, monkeypatch, "fake-secret-finetune") + ["--no-ab-after-training"]
        assert finetune.main(args) == 0
    finally:
        fake.close()
    card = json.loads((out / "card.json").read_text())
    assert card["data"]["source"] == "alpaca" and fake.requests
    held = [s for name in ("train", "validation", "test") for s in card["splits"][name]["sessions"]]
    assert held == [s.date().isoformat() for s in sessions][-len(held):] and len(held) >= 5
    assert "fake-secret-finetune" not in (out / "card.json").read_text()


def test_ab_of_alpaca_bars_resumes_on_a_rerun(tiny, tmp_path, monkeypatch):
    """--source alpaca: the data's "as of" is the clock, yet an identical A/B re-run resumes instead of refusing."""
    from support import simulated
    from support.fake_alpaca import FakeAlpaca, bars_page
    from marketdata import calendar as mcal

    sessions = mcal.recent_sessions(pd.Timestamp.now(tz="UTC"), 6, True)
    frame = simulated.simulate_bars(sessions[0].date().isoformat(), 6, seed=5)
    # no bars of the newest session, which may still be trading: the bars do not change between the runs
    frame = frame[frame.index < mcal.session_window(sessions[-1], True)[0]]
    fake = FakeAlpaca(lambda query: bars_page(frame, query))
    try:
        out = tmp_path / "alpaca"
        args = alpaca_run(tiny, out, fake, monkeypatch, "fake-secret-ab") + [
            "--ab-every", "120", "--ab-baselines", "random_walk", "--n-samples", "4", "--no-plots"]
        assert finetune.main(args) == 0
        mark_first_record(out / "ab")
        assert finetune.main(args + ["--ab"]) == 0
    finally:
        fake.close()
    assert first_record(out / "ab").get("kept") is True
