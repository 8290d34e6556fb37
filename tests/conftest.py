"""Shared test settings: never reach the model hub, and find the real bars through TEST_DATA_DIR."""
import os
from pathlib import Path

import pytest

# Tests run offline: checkpoints come from folders the tests write, never from the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    """real_weights tests run only when selected (-m real_weights): they need the real checkpoints in the hub
    cache and minutes of CPU, so the default run skips them with the way to run them."""
    if "real_weights" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="real-weights check, not selected: `python tests/verify_install.py` fetches the "
                                   "pinned weights and runs them (or pytest -m real_weights where they are cached)")
    for item in items:
        if "real_weights" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def real_data_dir() -> Path:
    """The shared real-bars folder (CI points TEST_DATA_DIR at ../shared/data); skip when it is not given."""
    value = os.environ.get("TEST_DATA_DIR")
    if not value:
        pytest.skip("TEST_DATA_DIR is not set: real-bar tests need the shared data folder")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"TEST_DATA_DIR={value} is not a directory")
    return path


@pytest.fixture(scope="session")
def engine_device() -> str:
    """Where the engine tests run our sampler: the CPU, or a GPU with KRONOS_TEST_DEVICE=cuda (bench/gpu_checks.sh).

    CI has no GPU; the CUDA run is made on a lent GPU machine and its results are in the README.
    """
    device = os.environ.get("KRONOS_TEST_DEVICE", "cpu")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            pytest.fail(f"KRONOS_TEST_DEVICE={device} but torch sees no CUDA device")
    return device


@pytest.fixture(scope="session")
def checkpoint_pairs(tmp_path_factory):
    """checkpoint_pairs(shape, seed) -> (model, tokenizer) folders of random weights, written once per session and
    shared by every module that asks for the same pair. Only for tests that never write into the folders: a test
    that changes its checkpoint writes its own with write_checkpoint_pair."""
    from support.kronos_checkpoints import write_checkpoint_pair

    root = tmp_path_factory.mktemp("checkpoints")
    written: dict[tuple[str, int], tuple[Path, Path]] = {}

    def get(shape: str, seed: int) -> tuple[Path, Path]:
        if (shape, seed) not in written:
            written[shape, seed] = write_checkpoint_pair(root / f"{shape}_{seed}", shape, seed=seed)
        return written[shape, seed]
    return get


# ----------------------------------------------------------------------------- fine-tuning (test_finetune and its
# bad-input table): a module asks for one_thread with pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture
def one_thread():
    """Tiny networks: one thread is faster than two fighting over a loaded CI machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random-weight checkpoint pair that fine-tuning may train from (each module gets its own)."""
    from support.kronos_checkpoints import write_checkpoint_pair

    return write_checkpoint_pair(tmp_path_factory.mktemp("tiny"), "tiny", seed=3)


@pytest.fixture(scope="session")
def synthetic_bars_csv(tmp_path_factory):
    """support.bars.synthetic_bars in a CSV (read only: shared by the session)."""
    from support.bars import synthetic_bars

    path = tmp_path_factory.mktemp("synthetic_bars") / "bars.csv"
    synthetic_bars().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    """Eight full sessions of the real QQQ file (2025-05-01 .. 2025-05-12), in a temporary file."""
    import pandas as pd

    from support.real_files import POLOILO

    value = os.environ.get("TEST_DATA_DIR")
    if not value:
        pytest.skip("TEST_DATA_DIR is not set: real-bar tests need the shared data folder")
    raw = pd.read_csv(Path(value) / POLOILO)
    stamp = pd.to_datetime(raw["Datetime"])
    path = tmp_path_factory.mktemp("bars") / "qqq.csv"
    raw[(stamp >= "2025-05-01") & (stamp < "2025-05-13")].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def sim():
    """Six sessions of simulated minute bars (the walk-forward tests' known answers)."""
    from support import simulated

    return simulated.simulate_bars("2025-03-03", 6, seed=21)
