"""The command line of a small, fast finetune.py run (test_finetune and its bad-input table share it)."""
from support.bars import ROOT


def argv(tiny, bars, out, *extra) -> list[str]:
    model, tok = tiny
    return ["--config", str(ROOT / "config.yaml"), "--csv", str(bars), "--model", str(model), "--tokenizer", str(tok),
            "--out", str(out), "--sessions", "8", "--val-sessions", "2", "--test-sessions", "2", "--lookback", "30",
            "--horizon", "10", "--stride", "20", "--batch-size", "8", "--warmup-steps", "2", "--lr", "2e-3",
            "--eval-windows", "16", "--no-ab-after-training", "--no-progress", "--no-plots", "--device", "cpu",
            *extra]
