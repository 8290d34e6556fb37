"""The forecasting loop: one forecast per closed bar through the pipeline (equal to the CLI's at that instant),
skips with their reasons (a gap beyond the gap policy, a budget overrun), no backlog, one batched engine call for
several symbols, and the calendar (bars outside the session windows are never forecast)."""
import json
import logging

import pandas as pd
import pytest

import cli_kronos_prob_qqq as cli
from app.exits import ExitCode
from support.live_support import ManualClock, SpySampler, canonical_bars, make_loop, serve_config
from support.bars import args_for

T_CLOSE = pd.Timestamp("2025-06-04T15:01:00Z")   # the close of the 15:00 bar


@pytest.fixture(scope="module")
def ckpt(checkpoint_pairs):
    return checkpoint_pairs("tiny", 0)  # read only: shared by the session (conftest.py)


@pytest.fixture(scope="module")
def bars():
    return canonical_bars()


def closed_by(frame, t):
    return frame[frame.index + pd.Timedelta(minutes=1) <= pd.Timestamp(t)]


def test_a_closed_bar_gives_the_cli_forecast_at_its_close(ckpt, bars, tmp_path):
    cfg = serve_config(ckpt, tmp_path / "live")
    loop, hub, book, clock, _ = make_loop(cfg, clock=ManualClock(T_CLOSE + pd.Timedelta(seconds=2)))
    book.upsert("QQQ", closed_by(bars, T_CLOSE))
    assert loop.step() is True
    assert loop.step() is False  # the same bar is never forecast twice

    latest_file = tmp_path / "live" / "pred_summary_QQQ_latest.json"
    document = json.loads(latest_file.read_text())
    assert hub.latest("QQQ") == document  # the page and the API carry exactly the file's JSON
    assert document["asof"] == "2025-06-04T15:01:00Z" and document["last_bar"] == "2025-06-04T15:00:00Z"
    assert sorted(p.name for p in (tmp_path / "live").iterdir() if not p.name.startswith(".")) == [
        "bands_QQQ_latest.csv", "paths_QQQ_latest.csv", "pred_summary_QQQ_20250604T150100Z.json",
        "pred_summary_QQQ_latest.json", "runs_QQQ.csv"]  # timestamped paths files are off; the summary the run-log
    # row names is kept
    log_rows = (tmp_path / "live" / "runs_QQQ.csv").read_text().splitlines()
    assert len(log_rows) == 2 and log_rows[1].startswith("2025-06-04T15:01:00Z,2025-06-04T15:00:00Z,QQQ,")
    assert ",pred_summary_QQQ_20250604T150100Z.json," in log_rows[1]
    assert json.loads((tmp_path / "live" / "pred_summary_QQQ_20250604T150100Z.json").read_text()) == document

    # the CLI replaying the same instant with the same settings computes the same forecast
    csv = tmp_path / "bars.csv"
    bars.rename_axis("timestamp").reset_index().to_csv(csv, index=False)
    code = cli.main(args_for(ckpt, csv, tmp_path / "cli", "--asof", "2025-06-04T15:01:00Z", "--seed", "3",
                             "--n-samples", "4", "--lookback", "120", "--horizon", "10"))
    assert code == ExitCode.OK
    by_cli = json.loads((tmp_path / "cli" / "pred_summary_QQQ_latest.json").read_text())
    assert by_cli["summary"] == document["summary"]
    assert by_cli["future_times"] == document["future_times"] and by_cli["now_close"] == document["now_close"]


def test_a_gap_beyond_the_gap_policy_skips_the_minute(ckpt, bars, tmp_path):
    cfg = serve_config(ckpt, tmp_path / "live")  # max_recent_filled 10 of recent_window 30
    loop, hub, book, *_ = make_loop(cfg, clock=ManualClock(T_CLOSE))
    data = closed_by(bars, T_CLOSE)
    gap = (data.index >= "2025-06-04T14:45Z") & (data.index < "2025-06-04T15:00Z")  # 15 minutes missing
    book.upsert("QQQ", data[~gap])
    assert loop.step() is True
    (symbol, minute, reason), = loop.skips
    assert (symbol, minute) == ("QQQ", pd.Timestamp("2025-06-04T15:00Z"))
    assert reason.startswith("gap: 15 of the last 30 bars are gap fills")
    assert hub.health()["skipped"] == {"gap": 1} and hub.latest("QQQ") is None
    assert not (tmp_path / "live" / "pred_summary_QQQ_latest.json").exists()


def test_an_inference_over_budget_is_skipped_not_published(ckpt, bars, tmp_path):
    cfg = serve_config(ckpt, tmp_path / "live")
    loop, hub, book, *_ = make_loop(cfg, clock=ManualClock(T_CLOSE), budget=0.3,
                                    sampler=lambda s: SpySampler(s, delay=0.6))
    book.upsert("QQQ", closed_by(bars, T_CLOSE))
    assert loop.step() is True
    (_, minute, reason), = loop.skips
    assert minute == pd.Timestamp("2025-06-04T15:00Z") and reason.startswith("overrun: the forecast was ready")
    assert "over the time budget of 0.3 s" in reason
    assert hub.health()["skipped"] == {"overrun": 1} and hub.latest("QQQ") is None
    assert not (tmp_path / "live" / "pred_summary_QQQ_latest.json").exists()
    # the next bar, within budget, is published: the overrun skipped one minute, it did not stop the loop
    loop.budget_s = 600.0
    loop.clock.t = T_CLOSE + pd.Timedelta(minutes=1)
    book.upsert("QQQ", bars.loc[["2025-06-04T15:01Z"]])
    assert loop.step() is True and hub.latest("QQQ")["asof"] == "2025-06-04T15:02:00Z"


def test_bars_arriving_during_a_forecast_leave_no_backlog(ckpt, bars, tmp_path, caplog):
    cfg = serve_config(ckpt, tmp_path / "live", timestamped_files=True)
    clock = ManualClock(T_CLOSE)
    holder = {}

    def three_more_bars():  # runs inside the first engine call
        holder["book"].upsert("QQQ", bars.loc["2025-06-04T15:01Z":"2025-06-04T15:03Z"])
        clock.t = pd.Timestamp("2025-06-04T15:04:01Z")

    loop, hub, book, _, engine = make_loop(cfg, clock=clock, sampler=lambda s: SpySampler(s, during=three_more_bars))
    holder["book"] = book
    book.upsert("QQQ", closed_by(bars, T_CLOSE))
    with caplog.at_level(logging.INFO, logger="live.loop"):
        assert loop.step() is True and loop.step() is True and loop.step() is False
    assert [r["asof"] for r in hub.history("QQQ")] == ["2025-06-04T15:01:00Z", "2025-06-04T15:04:00Z"]
    # a superseded minute is the loop working as designed: INFO, never WARNING; one time format for a minute
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert [r.levelno for r in skipped] == [logging.INFO, logging.INFO]
    assert "bar 2025-06-04T15:01:00Z (11:01:00 ET) skipped: superseded: a newer bar (2025-06-04T15:03:00Z " \
           "(11:03:00 ET))" in skipped[0].getMessage()
    published = [r.getMessage() for r in caplog.records if "P(up)" in r.getMessage()]
    assert published[0].startswith("QQQ bar 2025-06-04T15:00:00Z (11:00:00 ET): P(up)")
    assert engine.batches == [1, 1]  # two engine calls, not four
    assert [(m.strftime("%H:%M"), r.split(":")[0]) for _, m, r in loop.skips] == [("15:01", "superseded"),
                                                                                   ("15:02", "superseded")]
    # with timestamped files on, each published forecast has its own, named in its JSON and the run log
    out = tmp_path / "live"
    assert sorted(p.name for p in out.glob("pred_summary_QQQ_2*.json")) == [
        "pred_summary_QQQ_20250604T150100Z.json", "pred_summary_QQQ_20250604T150400Z.json"]
    latest = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    assert latest["artifacts"]["stamp"] == "20250604T150400Z"
    assert (out / latest["artifacts"]["paths_close"]).exists()
    assert (out / "runs_QQQ.csv").read_text().splitlines()[-1].count("pred_summary_QQQ_20250604T150400Z.json") == 1


def test_several_symbols_share_one_batched_engine_call(ckpt, bars, tmp_path):
    cfg = serve_config(ckpt, tmp_path / "live", symbols=["QQQ", "SPY"])
    spy = canonical_bars(seed=5, price=300.0)
    loop, hub, book, _, engine = make_loop(cfg, symbols=("QQQ", "SPY"), clock=ManualClock(T_CLOSE),
                                           sampler=lambda s: SpySampler(s))
    book.upsert("QQQ", closed_by(bars, T_CLOSE))
    book.upsert("SPY", closed_by(spy, T_CLOSE))
    assert loop.step() is True
    assert engine.batches == [2]
    for symbol, frame in (("QQQ", bars), ("SPY", spy)):
        latest = hub.latest(symbol)
        assert latest["symbol"] == symbol and latest["now_close"] == frame.loc["2025-06-04T15:00Z", "close"]
        assert json.loads((tmp_path / "live" / f"pred_summary_{symbol}_latest.json").read_text()) == latest
    # batching does not change a forecast: SPY alone gives the same numbers
    alone, hub_alone, book_alone, *_ = make_loop(serve_config(ckpt, tmp_path / "alone", symbols=["SPY"]),
                                                 symbols=("SPY",), clock=ManualClock(T_CLOSE))
    book_alone.upsert("SPY", closed_by(spy, T_CLOSE))
    assert alone.step() is True
    assert hub_alone.latest("SPY")["summary"] == hub.latest("SPY")["summary"]


def test_only_minutes_inside_a_session_are_forecast_half_day_and_holiday(ckpt, tmp_path, caplog):
    # 2025-07-03 closes at 13:00 ET (17:00Z); 07-04 is a holiday; the next open is Monday 07-07 09:30 ET
    days = ("2025-06-30", "2025-07-01", "2025-07-02")
    frame = canonical_bars(days)
    half = pd.date_range("2025-07-03T13:30Z", "2025-07-03T17:09Z", freq="min")  # 10 post-close minutes
    extra = pd.DataFrame({c: frame["close"].iloc[-1] for c in frame.columns}, index=half)
    extra["volume"] = 1000.0
    cfg = serve_config(ckpt, tmp_path / "live")
    loop, hub, book, clock, _ = make_loop(cfg, clock=ManualClock("2025-07-03T17:00:00Z"))
    book.upsert("QQQ", frame)
    book.upsert("QQQ", extra[extra.index < "2025-07-03T17:00Z"])
    assert [d.minute for d in loop.due(clock.now())] == [pd.Timestamp("2025-07-03T16:59Z")]
    assert loop.step() is True  # the half day's last bar (its forecast is the next session's)
    assert hub.latest("QQQ")["future_times"][0] == "2025-07-07T13:30:00Z"
    clock.t = pd.Timestamp("2025-07-03T17:10:00Z")
    book.upsert("QQQ", extra[extra.index >= "2025-07-03T17:00Z"])  # after the early close: no forecasts
    assert loop.due(clock.now()) == [] and loop.step() is False
    with caplog.at_level(logging.INFO, logger="live.loop"):
        loop._idle_wait()
    assert "market closed; sleeping until the open at 2025-07-07T13:30:00Z (09:30:00 ET)" in caplog.text


@pytest.mark.parametrize("last_bar, near_close, min_horizon, code", [
    ("2025-06-04T19:58Z", "skip", 1, "session_end"),       # 1 minute left, near_close: skip
    ("2025-06-04T19:58Z", "truncate", 5, "session_end"),   # 1 minute left, fewer than min_horizon
    ("2025-06-04T02:00Z", "truncate", 1, "data"),          # a night bar: outside every session window
])
def test_a_skip_carries_its_code_from_where_it_is_raised(last_bar, near_close, min_horizon, code):
    from forecast.errors import Skipped
    from forecast.horizon import plan_horizon

    with pytest.raises(Skipped) as caught:
        plan_horizon(pd.Timestamp(last_bar), 30, True, near_close, min_horizon)
    assert caught.value.code == code


def test_a_fault_skip_is_a_warning_a_designed_one_info(caplog):
    from live.loop import ForecastLoop

    class Hub:
        def on_skip(self, *a):
            pass

    loop = ForecastLoop.__new__(ForecastLoop)  # only _skip's state
    loop.skips, loop.hub = [], Hub()
    with caplog.at_level(logging.INFO, logger="live.loop"):
        for code in ("superseded", "event", "session_end", "gap", "data", "overrun", "error"):
            loop._skip("QQQ", pd.Timestamp("2025-06-04T15:00Z"), code, "why")
    levels = {r.getMessage().split("skipped: ")[1].split(":")[0]: r.levelname for r in caplog.records}
    assert levels == {"superseded": "INFO", "event": "INFO", "session_end": "INFO", "gap": "WARNING",
                      "data": "WARNING", "overrun": "WARNING", "error": "WARNING"}


def test_log_times_read_alike_everywhere():
    from app.operation import StampFormatter
    from marketdata.stamps import log_stamp

    t = pd.Timestamp("2025-06-04T15:00:00Z")
    assert log_stamp(t) == log_stamp(t.timestamp()) == "2025-06-04T15:00:00Z (11:00:00 ET)"
    assert log_stamp(pd.Timestamp("2025-06-05T02:30:00Z")) == "2025-06-05T02:30:00Z (2025-06-04 22:30:00 ET)"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.created = t.timestamp()
    assert StampFormatter("%(asctime)s %(message)s").format(record) == "2025-06-04T15:00:00Z (11:00:00 ET) m"


def test_a_sparse_context_is_a_gap_skip_with_the_code_beside_the_reason():
    from marketdata.prepare import prepare_bars

    bars = canonical_bars()
    sparse = bars[(bars.index < "2025-06-04T14:30Z") | (bars.index.minute % 3 == 0)]
    _, info = prepare_bars(sparse, T_CLOSE, days=3, rth=True, max_recent_filled=5, recent_window=30)
    assert info.skip_code == "gap" and "gap fills" in info.skip_reason
    assert "skip_code" not in info.to_dict()  # the summary's provenance block is unchanged
