"""Bar files (real and synthetic) and prepare_bars, checked against hand-computed values."""
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marketdata import calendar as mcal
from marketdata.files import detect_label, read_bars_file
from marketdata.frame import DataError
from marketdata.prepare import prepare_bars, session_bars
from support.real_files import MASON, POLOILO, read_lean_zip


def et(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="America/New_York").tz_convert("UTC")


def write(tmp_path: Path, text: str, name: str = "bars.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------- real files

def test_masonblier_end_labelled_eastern_newest_first(real_data_dir):
    bars = read_bars_file(real_data_dir / MASON, tz="America/New_York")
    assert len(bars) == 1948
    assert bars.index.is_monotonic_increasing and bars.index.is_unique
    # File row "2019-02-11 09:31:00" (bar END, Eastern) is the 09:30 ET bar = 14:30 UTC.
    assert bars.index[0] == pd.Timestamp("2019-02-11 14:30", tz="UTC")
    assert bars.iloc[0].tolist() == [169.19, 169.28, 169.0616, 169.27, 777539.0]
    # File row "2019-02-15 16:00:00" is the 15:59 ET bar = 20:59 UTC.
    assert bars.index[-1] == pd.Timestamp("2019-02-15 20:59", tz="UTC")
    assert bars["close"].iloc[-1] == 171.95
    assert list(bars.columns) == ["open", "high", "low", "close", "volume"]
    assert str(bars.index.tz) == "UTC" and bars.index.name == "timestamp"


def test_masonblier_explicit_start_label_is_not_shifted(real_data_dir):
    bars = read_bars_file(real_data_dir / MASON, tz="America/New_York", label="start")
    assert bars.index[0] == pd.Timestamp("2019-02-11 14:31", tz="UTC")


def test_masonblier_prepare_fills_the_two_missing_minutes(real_data_dir):
    raw = read_bars_file(real_data_dir / MASON, tz="America/New_York")
    bars, info = prepare_bars(raw, et("2019-02-15 16:00"), days=3)
    assert info.sessions == ["2019-02-13", "2019-02-14", "2019-02-15"]
    assert info.bar_count == 3 * 390 and info.filled_count == 2 and info.real_count == 1168
    # File lacks end labels 14:32 and 14:37 -> bar starts 14:31 and 14:36 ET are filled.
    assert list(info.filled_index) == [et("2019-02-14 14:31"), et("2019-02-14 14:36")]
    # Previous closes by hand: end-label 14:31 row closes 171.55, end-label 14:36 row closes 171.49.
    assert bars.loc[et("2019-02-14 14:31")].tolist() == [171.55, 171.55, 171.55, 171.55, 0.0]
    assert bars.loc[et("2019-02-14 14:36")].tolist() == [171.49, 171.49, 171.49, 171.49, 0.0]
    assert info.skip_reason is None


def test_poloilo_naive_utc_start_labelled(real_data_dir):
    bars = read_bars_file(real_data_dir / POLOILO)
    assert len(bars) == 39467
    assert bars.index[0] == pd.Timestamp("2025-04-30 14:16", tz="UTC")
    assert bars.index[-1] == pd.Timestamp("2025-07-03 20:59", tz="UTC")
    assert bars.loc[pd.Timestamp("2025-07-03 13:29", tz="UTC"), "close"] == 553.23
    half_day = session_bars(bars, "2025-07-03")
    assert len(half_day) == 210
    assert half_day.index[-1] == et("2025-07-03 12:59")


def test_poloilo_half_day_prepare(real_data_dir):
    raw = read_bars_file(real_data_dir / POLOILO)
    bars, info = prepare_bars(raw, et("2025-07-03 17:00"), days=1)
    assert info.sessions == ["2025-07-03"] and info.bar_count == 210 and info.filled_count == 0
    assert info.last_bar == "2025-07-03T16:59:00+00:00"
    # Extended hours on the half day end 17:00 ET; the file's last bar starts 16:59 ET.
    ext, xinfo = prepare_bars(raw, et("2025-07-03 18:00"), days=1, rth=False)
    assert xinfo.last_bar == "2025-07-03T20:59:00+00:00"
    assert xinfo.bar_count == 13 * 60 - xinfo.leading_missing


def test_poloilo_replay_after_juneteenth_uses_only_closed_bars(real_data_dir):
    raw = read_bars_file(real_data_dir / POLOILO)
    bars, info = prepare_bars(raw, et("2025-06-20 10:00"), days=3)
    assert info.sessions == ["2025-06-17", "2025-06-18", "2025-06-20"]
    assert info.bar_count == 390 + 390 + 30 and info.filled_count == 0
    assert bars.index[-1] == et("2025-06-20 09:59")
    assert bars.index.max() < et("2025-06-20 10:00")
    # The 09:59 close is the file's 13:59 UTC row, whatever comes after it.
    assert bars["close"].iloc[-1] == raw.loc[pd.Timestamp("2025-06-20 13:59", tz="UTC"), "close"]


def test_label_auto_detection_on_the_real_files(real_data_dir):
    mason = read_bars_file(real_data_dir / MASON, tz="America/New_York", label="start")
    assert detect_label(mason.index) == "end"
    polo = read_bars_file(real_data_dir / POLOILO, label="start")
    assert detect_label(polo.index) == "start"


# ------------------------------------------------------------------------------------------ synthetic files

HEADER = "timestamp,open,high,low,close,volume\n"


def test_unsorted_rows_are_accepted_and_logged(tmp_path, caplog):
    p = write(tmp_path, HEADER + "2025-05-27 13:32:00,3,3,3,3,30\n2025-05-27 13:30:00,1,1,1,1,10\n"
                                 "2025-05-27 13:31:00,2,2,2,2,20\n")
    with caplog.at_level(logging.DEBUG, logger="marketdata.files"):
        bars = read_bars_file(p)
    assert bars["close"].tolist() == [1.0, 2.0, 3.0]
    assert bars.index[0] == pd.Timestamp("2025-05-27 13:30", tz="UTC")
    assert "sorted" in caplog.text


def test_duplicate_timestamp_is_named(tmp_path):
    p = write(tmp_path, HEADER + "2025-05-27 13:31:00,1,1,1,1,1\n2025-05-27 13:30:00,1,1,1,1,1\n"
                                 "2025-05-27 13:31:00,2,2,2,2,2\n")
    with pytest.raises(DataError, match=r"duplicated timestamp 2025-05-27T13:31:00\+00:00"):
        read_bars_file(p)


def test_nan_price_names_row_and_column(tmp_path):
    p = write(tmp_path, HEADER + "2025-05-27 13:30:00,1,1,1,1,1\n2025-05-27 13:31:00,1,1,,1,1\n")
    with pytest.raises(DataError, match=r"'low'.*data row 2 \(line 3\)"):
        read_bars_file(p)


def test_non_numeric_price(tmp_path):
    p = write(tmp_path, HEADER + "2025-05-27 13:30:00,1,abc,1,1,1\n")
    with pytest.raises(DataError, match=r"'high'.*'abc'.*data row 1"):
        read_bars_file(p)


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(DataError, match="empty"):
        read_bars_file(write(tmp_path, "", "empty.csv"))
    with pytest.raises(DataError, match="no data rows"):
        read_bars_file(write(tmp_path, HEADER, "header.csv"))


def test_missing_columns(tmp_path):
    with pytest.raises(DataError, match="missing column 'close'"):
        read_bars_file(write(tmp_path, "timestamp,open,high,low,volume\n2025-05-27 13:30:00,1,1,1,1\n"))
    with pytest.raises(DataError, match="no time column"):
        read_bars_file(write(tmp_path, "when,open,high,low,close,volume\nx,1,1,1,1,1\n", "b.csv"))


def test_missing_volume_is_zero_with_a_warning(tmp_path):
    p = write(tmp_path, "Datetime,Open,High,Low,Close\n2025-05-27 13:30:00,1,2,0.5,1.5\n")
    with pytest.warns(UserWarning, match="no volume column"):
        bars = read_bars_file(p)
    assert bars.iloc[0].tolist() == [1.0, 2.0, 0.5, 1.5, 0.0]


def test_short_aliases_extra_columns_and_offsets(tmp_path):
    p = write(tmp_path, "t,symbol,o,h,l,c,v,vw\n2025-05-27T09:30:00-04:00,QQQ,1,2,0.5,1.5,7,1.1\n"
                        "2026-01-06T09:30:00-05:00,QQQ,1,2,0.5,1.5,8,1.1\n")
    bars = read_bars_file(p)
    assert list(bars.index) == [pd.Timestamp("2025-05-27 13:30", tz="UTC"), pd.Timestamp("2026-01-06 14:30", tz="UTC")]
    assert bars["volume"].tolist() == [7.0, 8.0]


def test_naive_eastern_with_tz_argument(tmp_path):
    p = write(tmp_path, HEADER + "2026-01-06 09:30:00,1,1,1,1,1\n")
    assert read_bars_file(p, tz="America/New_York").index[0] == pd.Timestamp("2026-01-06 14:30", tz="UTC")
    assert read_bars_file(p).index[0] == pd.Timestamp("2026-01-06 09:30", tz="UTC")  # auto = UTC


def test_explicit_end_label_shifts_one_minute(tmp_path):
    p = write(tmp_path, HEADER + "2026-01-06 14:31:00,1,1,1,1,1\n")
    assert read_bars_file(p, label="end").index[0] == pd.Timestamp("2026-01-06 14:30", tz="UTC")


def test_epoch_milliseconds(tmp_path):
    ms = int(pd.Timestamp("2025-05-27 13:30", tz="UTC").timestamp() * 1000)
    p = write(tmp_path, f"{HEADER}{ms},1,1,1,1,1\n")
    assert read_bars_file(p).index[0] == pd.Timestamp("2025-05-27 13:30", tz="UTC")


def test_bad_time_and_off_minute_time(tmp_path):
    with pytest.raises(DataError, match=r"unparseable time 'soon' at data row 2"):
        read_bars_file(write(tmp_path, HEADER + "2025-05-27 13:30:00,1,1,1,1,1\nsoon,1,1,1,1,1\n"))
    with pytest.raises(DataError, match="not on a whole minute"):
        read_bars_file(write(tmp_path, HEADER + "2025-05-27 13:30:30,1,1,1,1,1\n", "b.csv"))


def test_several_symbols_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="several symbols"):
        read_bars_file(write(tmp_path, "timestamp,symbol,open,high,low,close,volume\n"
                                       "2025-05-27 13:30:00,QQQ,1,1,1,1,1\n2025-05-27 13:30:00,SPY,1,1,1,1,1\n"))
    with pytest.raises(DataError, match="unknown file type"):
        read_bars_file(write(tmp_path, HEADER, "bars.txt"))


def test_inconsistent_high_low_is_kept_and_counted(tmp_path):
    p = write(tmp_path, HEADER + "2025-05-27 13:30:00,1,0.5,2,1,1\n2025-05-27 13:31:00,1,1,1,1,1\n")
    bars = read_bars_file(p)
    assert len(bars) == 2 and bars.attrs["inconsistent_bars"] == 1


def test_parquet_with_aware_index(tmp_path):
    idx = pd.DatetimeIndex(["2025-05-27 09:31", "2025-05-27 09:30"], tz="America/New_York", name="ts")
    df = pd.DataFrame({"Open": [2.0, 1.0], "High": [2.0, 1.0], "Low": [2.0, 1.0], "Close": [2.5, 1.5],
                       "Volume": [20, 10]}, index=idx)
    p = tmp_path / "bars.parquet"
    df.to_parquet(p)
    bars = read_bars_file(p)
    assert list(bars.index) == [pd.Timestamp("2025-05-27 13:30", tz="UTC"), pd.Timestamp("2025-05-27 13:31", tz="UTC")]
    assert bars["close"].tolist() == [1.5, 2.5]
    assert bars["volume"].dtype == np.float64


def test_auto_label_detects_rth_end_labels(tmp_path):
    # One full RTH session written with end labels 09:31..16:00 ET (UTC-4 in May).
    starts = mcal.session_minutes("2025-05-27")
    lines = [f"{(s + pd.Timedelta(minutes=1)).strftime('%Y-%m-%d %H:%M:%S')},1,1,1,1,1" for s in starts]
    bars = read_bars_file(write(tmp_path, HEADER + "\n".join(lines) + "\n"))
    assert bars.index[0] == et("2025-05-27 09:30") and bars.index[-1] == et("2025-05-27 15:59")


# ------------------------------------------------------------------------------------------- prepare_bars

def frame(rows: dict[pd.Timestamp, tuple]) -> pd.DataFrame:
    idx = pd.DatetimeIndex(list(rows), name="timestamp").tz_convert("UTC")
    return pd.DataFrame([list(v) for v in rows.values()], index=idx,
                        columns=["open", "high", "low", "close", "volume"], dtype="float64").sort_index()


def full_session(day: str, price: float = 100.0) -> dict:
    return {t: (price, price + 1, price - 1, price, 10.0) for t in mcal.session_minutes(day)}


def test_prepare_drops_forming_bar_fills_gaps_and_not_across_sessions():
    rows = full_session("2025-05-23", 100.0)
    del rows[et("2025-05-23 15:58")], rows[et("2025-05-23 15:59")]
    rows[et("2025-05-23 15:57")] = (100.0, 101.0, 99.0, 100.25, 10.0)
    rows.update({
        # 09:30 missing: not filled from Friday's close.
        et("2025-05-27 09:31"): (50.0, 51.0, 49.0, 50.5, 5.0),
        et("2025-05-27 09:33"): (52.0, 53.0, 51.0, 52.5, 6.0),
        et("2025-05-27 09:34"): (53.0, 54.0, 52.0, 53.5, 7.0),
        et("2025-05-27 09:35"): (60.0, 61.0, 59.0, 60.5, 8.0),  # forming at 09:35:30
        et("2025-05-27 08:00"): (1.0, 1.0, 1.0, 1.0, 1.0),       # pre-market, outside RTH
    })
    # the fill rule alone: these prices halve overnight and stay, an unadjusted 2:1 split to the bad-bar rules
    # (tests/test_bar_quality.py)
    bars, info = prepare_bars(frame(rows), et("2025-05-27 09:35:30"), days=2, rules=None)
    assert info.sessions == ["2025-05-23", "2025-05-27"]
    assert info.bar_count == 390 + 4 and info.filled_count == 3 and info.real_count == 391
    assert info.dropped_unclosed == 1 and info.dropped_outside == 1 and info.leading_missing == 1
    assert bars.index[-1] == et("2025-05-27 09:34")
    assert et("2025-05-27 09:30") not in bars.index
    assert bars.loc[et("2025-05-23 15:58")].tolist() == [100.25, 100.25, 100.25, 100.25, 0.0]
    assert bars.loc[et("2025-05-23 15:59")].tolist() == [100.25, 100.25, 100.25, 100.25, 0.0]
    assert bars.loc[et("2025-05-27 09:32")].tolist() == [50.5, 50.5, 50.5, 50.5, 0.0]
    assert info.first_bar == "2025-05-23T13:30:00+00:00" and info.last_bar == "2025-05-27T13:34:00+00:00"
    assert len(session_bars(bars, "2025-05-27")) == 4
    assert info.skip_reason is None


def test_prepare_bar_closing_exactly_at_asof_is_kept():
    rows = {et("2025-05-27 09:30"): (1, 1, 1, 1, 1), et("2025-05-27 09:31"): (2, 2, 2, 2, 2)}
    bars, info = prepare_bars(frame(rows), et("2025-05-27 09:32"), days=1)
    assert bars["close"].tolist() == [1.0, 2.0] and info.dropped_unclosed == 0
    bars, info = prepare_bars(frame(rows), et("2025-05-27 09:31:59"), days=1)
    assert bars["close"].tolist() == [1.0] and info.dropped_unclosed == 1


def test_prepare_trailing_fill_up_to_last_closed_minute_and_skip_threshold():
    def run(last_real: str):
        rows = {t: (1.0, 1.0, 1.0, 1.0, 1.0) for t in mcal.minutes_between(et("2025-05-27 09:30"), et(last_real))}
        return prepare_bars(frame(rows), et("2025-05-27 10:30"), days=1, max_recent_filled=10, recent_window=30)

    bars, info = run("2025-05-27 10:20")    # real through 10:19, fills 10:20..10:29 = 10
    assert info.bar_count == 60 and info.filled_count == 10 and info.filled_recent == 10
    assert info.skip_reason is None
    bars, info = run("2025-05-27 10:19")    # real through 10:18, fills 10:19..10:29 = 11
    assert info.filled_recent == 11
    assert info.skip_reason is not None and "11 of the last 30" in info.skip_reason


def test_prepare_no_bars_and_stale_current_session():
    _, info = prepare_bars(frame({et("2025-05-01 10:00"): (1, 1, 1, 1, 1)}), et("2025-05-27 10:00"), days=3)
    assert info.bar_count == 0 and info.skip_reason.startswith("no closed bars")
    _, info = prepare_bars(frame(full_session("2025-05-23")), et("2025-05-27 10:00"), days=2)
    assert info.bar_count == 390 and info.empty_sessions == ["2025-05-27"]
    assert "no bars yet for the current session 2025-05-27" in info.skip_reason


def test_prepare_extended_hours_half_day_window():
    rows = {t: (1.0, 1.0, 1.0, 1.0, 1.0) for t in mcal.minutes_between(et("2026-11-27 04:00"), et("2026-11-27 04:02"))}
    rows[et("2026-11-27 16:59")] = (2.0, 2.0, 2.0, 2.0, 1.0)
    rows[et("2026-11-27 17:00")] = (3.0, 3.0, 3.0, 3.0, 1.0)   # outside: post-market ended 17:00
    bars, info = prepare_bars(frame(rows), et("2026-11-27 20:00"), days=1, rth=False)
    assert info.bar_count == 13 * 60 and info.filled_count == 13 * 60 - 3 and info.dropped_outside == 1
    assert bars.loc[et("2026-11-27 16:58"), "close"] == 1.0 and bars["close"].iloc[-1] == 2.0


def test_prepare_info_is_json_friendly():
    import json
    _, info = prepare_bars(frame(full_session("2025-05-23")), et("2025-05-24 12:00"), days=1)
    d = json.loads(json.dumps(info.to_dict()))
    assert d["sessions"] == ["2025-05-23"] and d["bar_count"] == 390 and "filled_index" not in d


def test_prepare_rejects_a_non_canonical_frame():
    rows = frame({et("2025-05-27 09:30"): (1, 1, 1, 1, 1), et("2025-05-27 09:31"): (2, 2, 2, 2, 2)})
    with pytest.raises(DataError, match="sorted and unique"):
        prepare_bars(rows.iloc[::-1], et("2025-05-27 10:00"), days=1)
    with pytest.raises(DataError, match="volume"):
        prepare_bars(rows.drop(columns="volume"), et("2025-05-27 10:00"), days=1)


def test_lean_spy_2013_six_full_sessions(real_data_dir):
    zips = sorted((real_data_dir / "lean_spy_minute").glob("*_trade.zip"))
    raw = pd.concat([read_lean_zip(p) for p in zips]).sort_index()
    bars, info = prepare_bars(raw, et("2013-10-11 16:00"), days=6)
    assert info.sessions == ["2013-10-04", "2013-10-07", "2013-10-08", "2013-10-09", "2013-10-10", "2013-10-11"]
    # PROVENANCE: exactly 390 RTH bars every day; no fills needed.
    assert info.bar_count == 2340 and info.filled_count == 0
    assert bars.index[0] == pd.Timestamp("2013-10-04 13:30", tz="UTC")  # first RTH row is 34200000 ms = 09:30 EDT
