"""The golden comparisons tolerate float noise and nothing else."""
from support.compare import csv_differences, differences


def test_json_floats_within_tolerance_pass_and_real_changes_fail() -> None:
    want = {"p": 0.62414017, "n": 40, "s": "QQQ", "q": [1.0, 2.5]}
    assert differences({"p": 0.62414017 * (1 + 1e-12), "n": 40, "s": "QQQ", "q": [1.0, 2.5]}, want) == []
    assert differences({"p": 0.6241402, "n": 40, "s": "QQQ", "q": [1.0, 2.5]}, want)          # 8th digit moved
    assert differences({"p": 0.62414017, "n": 41, "s": "QQQ", "q": [1.0, 2.5]}, want)         # an integer
    assert differences({"p": 0.62414017, "n": 40, "s": "SPY", "q": [1.0, 2.5]}, want)         # a string
    assert differences({"p": 0.62414017, "n": 40, "s": "QQQ", "q": [1.0]}, want)              # a length
    assert differences({"p": 0.62414017, "n": 40, "s": "QQQ", "q": [1.0, 2.5], "x": 1}, want)  # a new key


def test_csv_cells_may_round_the_other_way_in_their_last_printed_place_only() -> None:
    want = "t,p,label\n2025-06-02 15:00,0.62414017,up\n"
    assert csv_differences("t,p,label\n2025-06-02 15:00,0.62414018,up\n", want) == []   # one unit, last place
    assert csv_differences("t,p,label\n2025-06-02 15:00,0.62414020,up\n", want)         # three units
    assert csv_differences("t,p,label\n2025-06-02 15:01,0.62414017,up\n", want)         # a time
    assert csv_differences("t,p,label\n2025-06-02 15:00,0.62414017,down\n", want)       # a label
    assert csv_differences("t,p,label\n2025-06-02 15:00,0.62414017,up\nx,1,y\n", want)  # a row
