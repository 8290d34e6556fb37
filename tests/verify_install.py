"""Verify your installation against the real model, once per machine:

    python tests/verify_install.py               # CPU (a few minutes)
    python tests/verify_install.py --device cuda # the same checks on the GPU in float32, plus bfloat16

Fetches the pinned revisions of NeoQuasar/Kronos-small and NeoQuasar/Kronos-Tokenizer-base into the hub cache
(huggingface_hub.snapshot_download; about 100 MB, skipped when already cached), then runs
`pytest -m real_weights tests/test_real_weights.py`, which reads them from that cache only. Extra arguments go to
pytest. The exit code is pytest's (0: every check passed), or 5 (model) when the weights cannot be fetched.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from app.exits import ExitCode  # noqa: E402
from support.real_weights import FILES, PINNED, cached_snapshots, hub_cache  # noqa: E402


def fetch() -> str | None:
    """Download what is missing; -> None, or the one line that says why it failed."""
    from huggingface_hub import snapshot_download

    for repo, revision in PINNED:
        try:
            path = snapshot_download(repo, revision=revision, allow_patterns=list(FILES), cache_dir=hub_cache())
        except Exception as exc:  # network, offline mode, a missing revision: one line, whatever the type
            detail = " ".join(str(exc).split())
            return f"cannot fetch {repo} at revision {revision}: {type(exc).__name__}: {detail}"
        print(f"verify_install: {repo}@{revision[:12]} is in {path}", flush=True)
    missing = cached_snapshots()[1]  # what the tests will look for, where they will look
    return f"fetched, yet not found in the hub cache {hub_cache()}: {', '.join(missing)}" if missing else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where our engine runs")
    args, pytest_args = parser.parse_known_args(argv)
    problem = fetch()
    if problem:
        print(f"verify_install: {problem}", file=sys.stderr)
        return int(ExitCode.MODEL)
    env = dict(os.environ, KRONOS_TEST_DEVICE=args.device,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "pytest", "-m", "real_weights", "-rfEs", "tests/test_real_weights.py",
               *pytest_args]
    code = subprocess.call(command, cwd=ROOT, env=env)
    verdict = ("every real-weights check passed: this installation reproduces upstream's recorded outputs"
               if code == 0 else "a real-weights check FAILED or could not run (see above): do not trust its "
               "forecasts until that is resolved")
    print(f"verify_install: {verdict}", file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
