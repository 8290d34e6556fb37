"""Cron safety: the run lock and the time budget."""
import subprocess
import sys
import textwrap
import time

import pytest

from app.operation import LockHeld, TimeBudgetExceeded, run_lock, time_budget


def test_second_holder_is_refused_at_once(tmp_path):
    lock = tmp_path / "run.lock"
    with run_lock(lock):
        started = time.monotonic()
        with pytest.raises(LockHeld, match="another run holds"):
            with run_lock(lock):
                pass
        assert time.monotonic() - started < 1.0
    with run_lock(lock):  # released afterwards
        pass


def test_lock_is_held_across_processes(tmp_path):
    lock = tmp_path / "run.lock"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parents[1])!r})
        from app.operation import run_lock, LockHeld
        try:
            with run_lock(__import__('pathlib').Path({str(lock)!r})):
                print('got it')
        except LockHeld:
            print('refused')
    """)
    with run_lock(lock):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "refused"


def test_time_budget_interrupts_a_long_step():
    started = time.monotonic()
    with pytest.raises(TimeBudgetExceeded, match="time budget of 0.2 s"):
        with time_budget(0.2):
            time.sleep(5)
    assert time.monotonic() - started < 2


def test_time_budget_is_disarmed_after_the_block():
    with time_budget(0.2):
        pass
    time.sleep(0.4)  # no alarm may fire now


def test_readme_documents_every_exit_code():
    from pathlib import Path

    from app.exits import ExitCode

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("## Exit codes"):]
    for code in ExitCode:
        assert f"\n| {int(code)} |" in table, f"exit code {int(code)} ({code.name}) is not in the README"
