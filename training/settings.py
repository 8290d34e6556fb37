"""finetune.py's own keys (it reads the forecast's too); app.config builds its settings from them."""
from __future__ import annotations

from forecast.settings import KEYS, settings_class, Key, positive


# finetune.py's own keys; it reads the forecast's keys too (model, tokenizer, lookback, horizon, source, csv, ...).
FINETUNE_KEYS: tuple[Key, ...] = (
    Key("sessions", int, 20, "trading sessions of bars to fine-tune on (the last K), split in time into "
        "train, validation and test", check=lambda v: 3 <= v <= 400, rule="3..400"),
    Key("val_sessions", int, 2, "sessions after the training ones, for validation and early stopping",
        check=positive, rule=">= 1"),
    Key("test_sessions", int, 3, "the last sessions, held out for the A/B backtest only", check=positive,
        rule=">= 1"),
    Key("cross_sessions", bool, False, "let a window of lookback + horizon bars span consecutive sessions "
        "(overnight gap included, as a live context of several days does)"),
    Key("stride", int, 1, "bars between the starts of consecutive windows", check=positive, rule=">= 1"),
    Key("batch_size", int, 16, "windows per optimizer step, over all processes together", check=positive,
        rule=">= 1"),
    # at most 1000: far above any useful rate (a rate that diverges stops with exit 8), and far below what
    # overflows AdamW's update in float arithmetic (--lr 1e38 ended in a traceback)
    Key("lr", float, 4e-5, "predictor peak learning rate (upstream's fine-tuning recipe)",
        check=lambda v: 0 < v <= 1000, rule="in (0, 1000]"),
    Key("train_tokenizer", bool, False, "also fine-tune the tokenizer (reconstruction + quantiser losses)"),
    Key("tokenizer_lr", float, 2e-4, "tokenizer peak learning rate, when it is trained",
        check=lambda v: 0 < v <= 1000, rule="in (0, 1000]"),
    Key("weight_decay", float, 0.1, "AdamW weight decay (betas 0.9, 0.95)", check=lambda v: v >= 0, rule=">= 0"),
    Key("warmup_steps", int, 50, "linear warm-up steps before the cosine decay", check=positive, rule=">= 1"),
    Key("max_steps", int, 1000, "optimizer steps at most (the cosine decay ends here)", check=positive,
        rule=">= 1"),
    Key("eval_every", int, 50, "steps between validation passes (and resumable checkpoints)", check=positive,
        rule=">= 1"),
    Key("eval_windows", int, 256, "validation windows per pass, evenly spaced (0 = all)",
        check=lambda v: v >= 0, rule=">= 0"),
    Key("patience", int, 5, "validation passes without improvement before stopping early", check=positive,
        rule=">= 1"),
    Key("grad_clip", float, 3.0, "clip the gradients' global norm to this", check=positive, rule="> 0"),
    Key("dropout", float, None, "dropout of every layer while training (null = the checkpoint's own "
        "*_dropout_p values)", check=lambda v: 0 <= v < 1, rule="in [0, 1)"),
    Key("ab_after_training", bool, True, "run the A/B backtest on the test sessions when training ends",
        affects_results=False),
    Key("ab_every", int, 30, "A/B backtest: minutes between origins", check=lambda v: 1 <= v <= 390, rule="1..390",
        affects_results=False),
    Key("ab_baselines", list, ["random_walk", "block_bootstrap"], "A/B backtest: baselines shown beside the "
        "two Kronos checkpoints", check=lambda v: all(n in ("random_walk", "block_bootstrap", "garch") for n in v),
        rule="a list of random_walk, block_bootstrap, garch", affects_results=False),
)

FinetuneConfig = settings_class("FinetuneConfig", KEYS + FINETUNE_KEYS, "The forecast's settings plus fine-tuning's own keys.", __name__)
