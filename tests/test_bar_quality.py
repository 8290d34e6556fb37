"""Bad-bar checks (marketdata.quality through prepare_bars): silent on real tape, loud on impossible bars."""
import numpy as np
import pandas as pd
import pytest

from marketdata import calendar as mcal
from marketdata.files import read_bars_file
from marketdata.prepare import prepare_bars
from marketdata.quality import BarRules, find_bad_bars
from support.real_files import MASON, POLOILO, read_lean_zip


def real_tapes(data_dir):
    lean = pd.concat([read_lean_zip(p) for p in sorted((data_dir / "lean_spy_minute").glob("*_trade.zip"))])
    return {"QQQ 2025": read_bars_file(data_dir / POLOILO),
            "QQQ 2019": read_bars_file(data_dir / MASON, tz="America/New_York"),
            "SPY 2013": lean.sort_index()}


def session_ends(frame):
    days = pd.DatetimeIndex(frame.index).tz_convert(mcal.NY).tz_localize(None).normalize().unique()
    return [mcal.session_window(d, False)[1] for d in days if mcal.is_session(d)]


def test_real_regular_hours_tape_flags_nothing(real_data_dir):
    """Every session of the three real tapes, as the newest of a 3-session context: not one bar is flagged."""
    checked = 0
    for name, frame in real_tapes(real_data_dir).items():
        for end in session_ends(frame):
            _, info = prepare_bars(frame, end, days=3, rth=True)
            assert info.bad_bars == 0, (name, info.bad_bar_details)
            checked += 1
    assert checked >= 50


def test_real_extended_hours_flags_only_prints_that_jump_and_come_back(real_data_dir):
    """Extended hours (thin premarket prints): whatever is flagged lies over 1 % away from the closes of both
    the bar before and the bar after it -- a print that no trade around it confirms."""
    frame = real_tapes(real_data_dir)["QQQ 2025"]
    flagged = set()
    for end in session_ends(frame):
        _, info = prepare_bars(frame, end, days=1, rth=False)
        flagged |= {d.split(" ")[0] for d in info.bad_bar_details}
        assert info.bad_bars <= 2, info.bad_bar_details
    assert len(flagged) <= 5
    for stamp in flagged:
        t = pd.Timestamp(stamp)
        pos = frame.index.get_loc(t)
        bar, before, after = frame.iloc[pos], frame["close"].iloc[pos - 1], frame["close"].iloc[pos + 1]
        far = [p for p in bar[["open", "high", "low", "close"]] if min(abs(np.log(p / before)),
                                                                     abs(np.log(p / after))) > 0.01]
        assert far, (stamp, bar.to_dict(), before, after)


@pytest.mark.parametrize("field", ["close", "high", "low"])
def test_a_100x_tick_in_real_tape_is_dropped_and_filled(real_data_dir, field):
    frame = real_tapes(real_data_dir)["QQQ 2025"].copy()
    t = pd.Timestamp("2025-06-03T15:07Z")
    row = frame.loc[t].copy()
    if field == "low":
        row["low"] = row["low"] / 100
    else:
        row[field] = row[field] * 100
        row["high"] = max(row["high"], row[field])
    frame.loc[t] = row
    bars, info = prepare_bars(frame, pd.Timestamp("2025-06-03T16:00Z"), days=3)
    assert info.bad_bars == 1 and info.bad_bar_details[0].startswith("2025-06-03T15:07:00Z")
    assert t in info.filled_index
    prev_close = frame.loc[t - pd.Timedelta(minutes=1), "close"]
    assert bars.loc[t, ["open", "high", "low", "close"]].tolist() == [prev_close] * 4
    assert bars.loc[t, "volume"] == 0
    _, skipped = prepare_bars(frame, pd.Timestamp("2025-06-03T16:00Z"), days=3, bad_bars="skip")
    assert skipped.skip_reason.startswith("1 bad bar(s)") and "15:07" in skipped.skip_reason


def test_a_2x_tick_at_the_newest_bar_and_absurd_volume_are_found(real_data_dir):
    frame = real_tapes(real_data_dir)["QQQ 2019"].copy()
    newest = pd.Timestamp("2019-02-15T16:29Z")
    frame.loc[newest, ["open", "high", "low", "close"]] = frame.loc[newest, ["open", "high", "low", "close"]] * 2
    heavy = pd.Timestamp("2019-02-15T15:00Z")
    median = frame.loc["2019-02-13":"2019-02-15", "volume"].median()
    frame.loc[heavy, "volume"] = median * 1500
    _, info = prepare_bars(frame, newest + pd.Timedelta(minutes=1), days=3)
    assert info.bad_bars == 2
    assert "volume" in info.bad_bar_details[0] and "2019-02-15T15:00:00Z" in info.bad_bar_details[0]
    assert info.bad_bar_details[1].startswith("2019-02-15T16:29:00Z")


def frame_of(rows):
    idx = pd.date_range("2025-06-03T14:00Z", periods=len(rows), freq="min", name="timestamp")
    return pd.DataFrame(rows, index=idx, columns=["open", "high", "low", "close", "volume"], dtype="float64")


def walk(n=60, seed=0):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 3e-4, n)))
    open_ = np.r_[100.0, close[:-1]]
    return [[o, max(o, c) * 1.0002, min(o, c) * 0.9998, c, 1000.0] for o, c in zip(open_, close)]


@pytest.mark.parametrize("change, words", [
    ({"close": 0.0}, "not positive"),
    ({"open": -5.0}, "not positive"),
    ({"high": 99.0, "low": 98.0, "open": 100.0, "close": 100.0}, "high below"),
    ({"low": "above"}, "low above"),
    ({"volume": -1.0}, "negative or missing volume"),
    ({"volume": 2e6}, "median volume"),
])
def test_impossible_bars_are_named(change, words):
    rows = walk()
    frame = frame_of(rows)
    t = frame.index[30]
    for k, v in change.items():
        # "above": between the open/close and the high
        frame.loc[t, k] = (max(frame.loc[t, ["open", "close"]]) + frame.loc[t, "high"]) / 2 if v == "above" else v
    bad = find_bad_bars([frame], BarRules())
    assert [b.time for b in bad] == [t] and words in bad[0].reason


def test_a_level_shift_that_stays_is_not_a_tick():
    rows = walk()
    frame = frame_of(rows)
    frame.iloc[30:, :4] *= 1.2  # a 20 % gap that holds (about 300 typical moves of this tape)
    assert find_bad_bars([frame], BarRules()) == []
    frame.iloc[31:, :4] /= 1.2  # ... and one that comes straight back is a tick
    assert [b.time for b in find_bad_bars([frame], BarRules())] == [frame.index[30]]


def test_typical_move_and_multiple_by_hand():
    # closes alternate 100 / 100.1 (every move log(1.001)), ranges 0: the typical move is log(1.001)
    closes = [100.0, 100.1] * 10
    rows = [[c, c, c, c, 10.0] for c in closes]
    # the 5 closes on each side of bar 10 have median 100.1: log(101 / 100.1) / log(1.001) = 8.955 typical moves
    rows[10] = [101.0] * 4 + [10.0]
    frame = frame_of(rows)
    assert find_bad_bars([frame], BarRules(move_multiple=9)) == []
    bad = find_bad_bars([frame], BarRules(move_multiple=8.9))
    assert [b.time for b in bad] == [frame.index[10]] and "is 9x the typical 1-minute move (0.100%)" in bad[0].reason


def test_dropped_unclosed_counts_only_the_forming_bar_and_fill_stretches_are_reported():
    """A replay at 10:30:30 ET of a file that runs to the close: one bar is forming (10:30), the 329 after it are
    the replay's future, not 'unclosed'. A 25-minute hole yesterday is reported, though the recent window is clean."""
    rows = {}
    for day in ("2025-05-22", "2025-05-23"):
        for i, t in enumerate(mcal.session_minutes(day)):
            if day == "2025-05-22" and 60 <= i < 85:
                continue  # 10:30-10:54 ET missing
            p = 100 + 0.01 * (i % 7)
            rows[t] = (p, p + 0.02, p - 0.02, p, 1000.0)
    f = pd.DataFrame(list(rows.values()), index=pd.DatetimeIndex(list(rows), name="timestamp"),
                     columns=["open", "high", "low", "close", "volume"])
    asof = pd.Timestamp("2025-05-23 10:30:30", tz="America/New_York").tz_convert("UTC")
    _, info = prepare_bars(f, asof, days=2, max_recent_filled=10, recent_window=30)
    assert info.dropped_unclosed == 1 and info.after_asof == 390 - 61
    assert info.filled_count == 25 and info.filled_recent == 0 and info.filled_max_window == 25
    assert info.skip_reason is None and any("25 gap fills in 30 bars" in n for n in info.notes())


@pytest.mark.parametrize("policy", ["drop", "Fill", ""])
def test_an_unknown_bad_bar_policy_is_refused(policy):
    """Only fill and skip do something with a bad bar; any other word would count it, say in the notes that it
    was replaced by a gap fill, and hand it to the model as it was."""
    frame = frame_of(walk())
    frame.iloc[30, :4] *= 100  # a 100x tick
    asof = frame.index[-1] + pd.Timedelta(minutes=1)
    _, info = prepare_bars(frame, asof, days=1)
    assert info.bad_bars == 1 and frame.index[30] in info.filled_index
    with pytest.raises(ValueError, match="bad_bars must be one of fill, skip"):
        prepare_bars(frame, asof, days=1, bad_bars=policy)


# ------------------------------------------------------------------------------------------- unadjusted splits

def sessions_of(frame):
    """The frame cut into its New York days (what prepare_bars hands find_bad_bars), oldest first."""
    days = pd.DatetimeIndex(frame.index).tz_convert(mcal.NY).tz_localize(None).normalize()
    return [frame[days == d] for d in days.unique()]


def test_real_tapes_hold_no_split_like_bar_and_their_largest_move_is_far_from_any_split(real_data_dir):
    """Every session of every real tape at once, extended hours and every overnight gap included: nothing looks
    like a split. The margin, by hand: the smallest split move (3:2, log 1.5 less the 10 % tolerance) is over
    seven times the largest one-bar move of these tapes (3.9 %, QQQ 2025 premarket)."""
    largest = 0.0
    for name, frame in real_tapes(real_data_dir).items():
        bad = find_bad_bars(sessions_of(frame), BarRules())
        assert not [b for b in bad if b.kind == "split"], (name, [b.describe() for b in bad if b.kind == "split"])
        largest = max(largest, float(np.abs(np.diff(np.log(frame["close"].to_numpy(float)))).max()))
    assert 0.03 < largest < 0.04
    assert np.log(1.5) - np.log(1.10) > 7 * largest
    # (each session as the newest of a 3-session context: test_real_regular_hours_tape_flags_nothing)


@pytest.mark.parametrize("factor, ratio", [(2.0, "2:1"), (3.0, "3:1"), (1.5, "3:2"), (10.0, "10:1"),
                                           (0.5, "1:2"), (0.1, "1:10")])
def test_an_unadjusted_split_in_real_tape_refuses_the_context_under_both_policies(real_data_dir, factor, ratio):
    """QQQ 2025 with the sessions before 2025-06-03 left unadjusted (prices times ``factor``): the first bar of
    2025-06-03 is named as a ``ratio`` split, counted as a bad bar, and no policy fills it away."""
    frame = real_tapes(real_data_dir)["QQQ 2025"].copy()
    split = pd.Timestamp("2025-06-03T08:00Z")  # 04:00 ET, the session's first bar with extended hours
    frame.loc[frame.index < split, ["open", "high", "low", "close"]] *= factor
    for rth, first in ((True, "2025-06-03T13:30:00Z"), (False, "2025-06-03T08:00:00Z")):
        for policy in ("fill", "skip"):
            _, info = prepare_bars(frame, pd.Timestamp("2025-06-03T15:00Z"), days=3, rth=rth, bad_bars=policy)
            assert info.bad_bars >= 1 and info.skip_code == "data", info.bad_bar_details
            assert f"{first} close" in info.skip_reason and f"unadjusted {ratio} split" in info.skip_reason
            assert "split-adjusted" in info.skip_reason
    _, after = prepare_bars(frame, pd.Timestamp("2025-06-06T15:00Z"), days=3)  # the split left the context
    assert after.bad_bars == 0 and after.skip_reason is None


def test_a_split_needs_a_ratio_and_a_level_that_holds():
    rows = walk(n=80)
    frame = frame_of(rows)
    frame.iloc[40:, :4] /= 2
    bad = find_bad_bars([frame.iloc[:40], frame.iloc[40:]], BarRules())
    assert [(b.time, b.kind) for b in bad] == [(frame.index[40], "split")] and "-50%" in bad[0].reason
    assert find_bad_bars([frame.iloc[:41]], BarRules())[0].kind == "bad"  # the newest bar: a tick until confirmed
    frame.iloc[40:, :4] *= 2 / 1.667  # a lasting 40 % fall: no split ratio within 10 %, a level shift, not bad
    assert find_bad_bars([frame.iloc[:40], frame.iloc[40:]], BarRules()) == []
    frame = frame_of(rows)
    frame.iloc[40, :4] /= 2  # halved for one bar only: a tick, not a split
    assert [b.kind for b in find_bad_bars([frame], BarRules())] == ["bad"]
