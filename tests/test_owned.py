"""forecast/owned.py's rules on their own: the layout, what a killed write leaves, links, markers, order."""
import json

import pytest

from forecast.owned import MARKER, ForeignPath, Owner, check, claim, first_foreign

LAYOUT = {"report.json": None, "calibrator_*.json": None, "parts": {"*.jsonl": None}, "best": {"model.bin": None}}
OWNER = Owner("tool.py", LAYOUT, signature=lambda folder: (folder / "report.json").is_file())


def make(root, *names):
    for name in names:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")


def test_layout_names_files_and_folders_by_kind_and_the_first_stranger_is_found_in_order(tmp_path):
    make(tmp_path, "report.json", "calibrator_a.json", "parts/2025.jsonl", "best/model.bin")
    assert first_foreign(tmp_path, LAYOUT) is None
    make(tmp_path, "parts/z.txt", "best/notes.md", "zz.txt")
    assert first_foreign(tmp_path, LAYOUT) == tmp_path / "best" / "notes.md"  # sorted, depth first
    (tmp_path / "best" / "notes.md").unlink()
    assert first_foreign(tmp_path, LAYOUT) == tmp_path / "parts" / "z.txt"
    make(tmp_path / "x", "report.json/")  # a folder where the layout has a file
    assert first_foreign(tmp_path / "x", LAYOUT) == tmp_path / "x" / "report.json"


@pytest.mark.parametrize("name, ours", [
    (".report.json.k2j3.tmp", True), (".best.tmp", True), (".best.old", True), (".calibrator_x.json.ab.tmp", True),
    (".notes.txt.ab.tmp", False), (".report.json", False), ("report.json.tmp", False), (".bestx.tmp", False),
])
def test_what_a_killed_write_leaves_is_ours_only_under_a_name_of_the_layout(tmp_path, name, ours):
    make(tmp_path, name)
    assert (first_foreign(tmp_path, LAYOUT) is None) == ours


def test_links_are_never_ours(tmp_path):
    (tmp_path / "elsewhere.json").write_text("{}")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").symlink_to(tmp_path / "elsewhere.json")
    assert first_foreign(tmp_path / "run", LAYOUT) == tmp_path / "run" / "report.json"


def test_claim_marks_a_new_or_empty_folder_and_refuses_anything_else(tmp_path):
    claim(tmp_path / "new", OWNER)
    assert json.loads((tmp_path / "new" / MARKER).read_text())["tool"] == "tool.py"
    make(tmp_path, "mine/notes.txt")
    with pytest.raises(ForeignPath, match=r"mine was not written by tool.py \(it has no .kronos-owned.json\) "
                                          r"and holds .*notes.txt"):
        check(tmp_path / "mine", OWNER)
    make(tmp_path, "other/report.json")
    (tmp_path / "other" / MARKER).write_text(json.dumps({"tool": "else.py"}))
    with pytest.raises(ForeignPath, match="holds the files of else.py, not of tool.py"):
        check(tmp_path / "other", OWNER)
    (tmp_path / "other" / MARKER).write_text("[")
    with pytest.raises(ForeignPath, match="damaged"):
        check(tmp_path / "other", OWNER)
    assert (tmp_path / "other" / MARKER).read_text() == "["


def test_an_unmarked_folder_is_taken_over_only_when_it_fits_and_its_signature_says_ours(tmp_path):
    make(tmp_path, "a/calibrator_x.json")
    with pytest.raises(ForeignPath, match="no .kronos-owned.json"):  # fits, but no report.json: not a run of ours
        claim(tmp_path / "a", OWNER)
    make(tmp_path, "a/report.json", "a/notes.txt")
    with pytest.raises(ForeignPath, match="notes.txt"):  # a run of ours, with a stranger in it
        claim(tmp_path / "a", OWNER)
    assert not (tmp_path / "a" / MARKER).exists()
    (tmp_path / "a" / "notes.txt").unlink()
    claim(tmp_path / "a", OWNER)
    assert (tmp_path / "a" / MARKER).is_file() and check(tmp_path / "a", OWNER) is False
