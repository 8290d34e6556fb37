"""One fine-tuning run, start to end: every check that can fail on bad input runs before anything is written;
then the windows, the networks, the training loop (resumed from OUT/last when it is there), the card and the A/B.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from training.settings import FINETUNE_KEYS
from forecast.errors import ConfigError
from forecast.errors import SettingsError
from training import checkpoint as ck
from training.card import CARD, CURVE, plot_losses, write_card
from training.distributed import World, barrier, close_world, init_world
from training.windows import SPLITS, Split, build_splits

log = logging.getLogger("finetune")
DROPOUT_FIELDS = ("attn_dropout_p", "resid_dropout_p", "ffn_dropout_p", "token_dropout_p")


def _earlier_run(out: Path) -> bool:
    """OUT/last/state.pt of ours: it loads and holds a fine-tuning fingerprint."""
    from kronos import CheckpointError

    if not ck.has_last(out):
        return False
    try:
        return "fingerprint" in ck.read_state(out / "last")
    except CheckpointError:
        return False


def _owner() -> Any:
    """What finetune.py writes in OUT: checkpoints, the card, the loss curve and the A/B backtest."""
    from evaluation.jobs import RUN_LAYOUT
    from forecast.owned import Owner

    from kronos.loading import TRAINED_FOR

    network = {ck.CONFIG: None, ck.WEIGHTS: None}
    return Owner("finetune.py", {CARD: None, CURVE: None, "best": {**network, TRAINED_FOR: None},
                                 "best_tokenizer": network,
                                 "last": {**network, ck.STATE: None, "tokenizer": network},
                                 "ab": {**RUN_LAYOUT, "ab.json": None}}, _earlier_run)


def check_output(out: Path) -> None:
    """The output folder can be created and written (checked without writing anything)."""
    if out.exists() and not out.is_dir():
        raise SettingsError(f"--out {out} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SettingsError(f"--out {out} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SettingsError(f"--out {out} cannot be written: no write permission on {existing}")


def check_context(cfg: Any) -> dict[str, Any]:
    """Both checkpoints' config.json (raw), after checking that a window fits the predictor's context."""
    from kronos.config import check_pair, default_context, predictor_config, tokenizer_config
    from kronos.loading import locate

    m, t = locate(cfg.model, cfg.model_revision), locate(cfg.tokenizer, cfg.tokenizer_revision)
    pcfg = predictor_config(m.config, str(m.config_path))
    check_pair(pcfg, tokenizer_config(t.config, str(t.config_path)), str(m.config_path), str(t.config_path))
    context = cfg.max_context or default_context(cfg.model, pcfg)
    if cfg.lookback + cfg.horizon > context:
        raise SettingsError(f"a window of lookback + horizon = {cfg.lookback} + {cfg.horizon} bars is longer than "
                            f"the model's context of {context}: lower --lookback to at most "
                            f"{context - cfg.horizon}")
    return {"model": m.config, "tokenizer": t.config, "context": context, "tokenizer_revision": t.revision,
            "model_layout": ck.Layout.of(m.config, m.weights_path), "tokenizer_layout": ck.Layout.of(t.config, t.weights_path)}


def splits_of(cfg: Any, data: Any) -> dict[str, Split]:
    """The train / validation / test windows of the loaded sessions, under the run's split settings."""
    return build_splits(data.sessions, cfg.val_sessions, cfg.test_sessions, cfg.lookback + cfg.horizon, cfg.stride,
                        cfg.cross_sessions, cfg.time_label)


def fingerprint(cfg: Any, splits: dict[str, Split]) -> dict[str, Any]:
    """What decides the trained weights: a run resumes only with equal ones (the A/B's keys, marked
    affects_results=False in app.config, may change on resume)."""
    keys = [k.name for k in FINETUNE_KEYS if k.affects_results]
    keys += ["symbol", "model", "model_revision", "tokenizer", "tokenizer_revision", "lookback", "horizon",
             "time_label", "rth", "seed"]
    return {"settings": {k: getattr(cfg, k) for k in keys},
            "sessions": {name: s.sessions for name, s in splits.items()}}


def prepare(cfg: Any, out: Path, world: World, fresh: bool) -> tuple[Any, dict[str, Split], dict[str, Any]]:
    """Data, splits and checkpoint checks; nothing is written. -> (training data, splits, raw configs)."""
    from forecast.owned import check
    from training.data import load_training_bars

    check_output(out)
    check(out, _owner())  # only our own files are replaced or deleted in OUT (exit 2 naming the first other)
    configs = check_context(cfg)  # reads both config.json files and the derived buffers of both weights files
    data = load_training_bars(cfg)
    splits = splits_of(cfg, data)
    if cfg.batch_size % world.size:
        raise ConfigError(f"config key 'batch_size' ({cfg.batch_size}) must be a multiple of the number of "
                          f"processes ({world.size})")
    if splits["train"].n_windows < cfg.batch_size:
        raise SettingsError(f"only {splits['train'].n_windows} training windows, fewer than batch_size "
                            f"{cfg.batch_size}: load more sessions or lower --batch-size / --stride")
    if ck.has_last(out) and not fresh:
        state = ck.read_state(out / "last")
        if state.get("fingerprint") != fingerprint(cfg, splits):
            raise ConfigError(f"{out} holds a fine-tuning run with other settings or sessions: rerun with the "
                              "same ones to resume it, pass --fresh to start over, or choose another --out")
    return data, splits, configs


def load_networks(cfg: Any, configs: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """The predictor to train and the tokenizer (trainable, or frozen for inference), dropout set."""
    from kronos.layers import set_dropout
    from kronos.loading import build, load_trainable, locate
    from kronos.config import tokenizer_config
    from kronos.model import Kronos, KronosTokenizer

    predictor, _ = load_trainable(Kronos, cfg.model, cfg.model_revision, device)
    p = {f: float(configs["model"].get(f, 0.0)) if cfg.dropout is None else cfg.dropout for f in DROPOUT_FIELDS}
    set_dropout(predictor, p["attn_dropout_p"], p["resid_dropout_p"], p["ffn_dropout_p"])
    predictor.token_dropout = p["token_dropout_p"]
    if cfg.train_tokenizer:
        tokenizer, _ = load_trainable(KronosTokenizer, cfg.tokenizer, cfg.tokenizer_revision, device)
        t = {f: float(configs["tokenizer"].get(f, 0.0)) if cfg.dropout is None else cfg.dropout
             for f in DROPOUT_FIELDS[:3]}
        set_dropout(tokenizer, t["attn_dropout_p"], t["resid_dropout_p"], t["ffn_dropout_p"])
    else:
        loc = locate(cfg.tokenizer, cfg.tokenizer_revision)
        tokenizer = build(KronosTokenizer, tokenizer_config(loc.config, str(loc.config_path)), loc, device,
                          torch.float32)
    return predictor, tokenizer


def base_card(cfg: Any, data: Any, splits: dict[str, Split], world: World, configs: dict[str, Any]) -> dict:
    length = cfg.lookback + cfg.horizon
    return {
        "created_utc": pd.Timestamp.now(tz="UTC").isoformat(),
        "symbol": cfg.symbol, "model": cfg.model, "model_revision": cfg.model_revision,
        "tokenizer": cfg.tokenizer, "tokenizer_revision": cfg.tokenizer_revision,
        "context": configs["context"], "use": "pass --model OUT/best to any script, if the A/B says adopt: its "
                                               "trained_for.json names the tokenizer and the lookback, horizon and "
                                               "rth it was trained for",
        "data": data.provenance,
        "data_range": {"first_bar": splits["train"].describe(length)["first_bar"],
                       "last_bar": splits["test"].describe(length)["last_bar"]},
        "splits": {name: splits[name].describe(length) for name in SPLITS},
        "window": {"lookback": cfg.lookback, "horizon": cfg.horizon, "length": length,
                   "cross_sessions": cfg.cross_sessions, "stride": cfg.stride, "time_label": cfg.time_label,
                   "normalisation": "per window: float64 mean and population std, (x - mean) / (std + 1e-5), "
                                    "clipped at +-5 (kronos.inputs.normalise, as at inference)"},
        "settings": {k.name: getattr(cfg, k.name) for k in FINETUNE_KEYS},
        "processes": world.size, "device": str(world.device),
        "precision": "bf16 autocast, fp32 weights" if world.device.type == "cuda" else "fp32",
    }


def train(cfg: Any, out: Path, fresh: bool = False, progress: bool = True) -> tuple[dict, Any, dict, World]:
    """Prepare, train (or resume), write the card; -> (card, data, splits, world)."""
    from training.loop import TrainSettings, Trainer

    world = init_world(cfg.device)
    data, splits, configs = prepare(cfg, out, world, fresh)
    barrier(world)  # every rank has checked the last state before rank 0 may replace it
    if world.main:
        from forecast.owned import claim

        claim(out, _owner())
        if fresh:
            for name in ("last", "best", "best_tokenizer", "ab"):
                if (out / name).exists():
                    shutil.rmtree(out / name)
    barrier(world)
    predictor, tokenizer = load_networks(cfg, configs, world.device)
    seed = 0 if cfg.seed is None else cfg.seed
    settings = TrainSettings(cfg.batch_size, cfg.lr, cfg.tokenizer_lr, cfg.weight_decay, cfg.warmup_steps,
                             cfg.max_steps, cfg.eval_every, cfg.eval_windows, cfg.patience, cfg.grad_clip, seed)
    trainer = Trainer(predictor, tokenizer, splits, cfg.lookback + cfg.horizon, settings, world, out,
                      configs["model_layout"], configs["tokenizer_layout"], cfg.train_tokenizer,
                      fingerprint(cfg, splits))
    trainer.best_record = ck.trained_for_record(cfg, configs["tokenizer_revision"])
    if ck.has_last(out):
        trainer.restore(ck.load_last(out / "last", predictor, tokenizer if cfg.train_tokenizer else None))
        log.info("resuming from %s at step %d", out / "last", trainer.step)
    result = trainer.run(progress=progress)
    card = base_card(cfg, data, splits, world, configs)
    card["training"] = result
    record = trainer.best_record["tokenizer"]
    tokenizer = str(out / "best_tokenizer") if cfg.train_tokenizer else record.get("path", cfg.tokenizer)
    card["best"] = {"model": str(out / "best"), "tokenizer": tokenizer,
                    "tokenizer_revision": record.get("revision"),
                    "trained_for": trainer.best_record["settings"]}
    if world.main:
        write_card(out, card)
        plot_losses(out, result["history"], result["best_step"])
    barrier(world)
    return card, data, splits, world


def ab_test(cfg: Any, out: Path, card: dict, data: Any, splits: dict[str, Split], progress: bool,
            plots: bool) -> dict[str, Any]:
    """The A/B on the test sessions; its verdict goes into the card."""
    from training.ab import RULE, console_table, run_ab

    tok = out / "best_tokenizer" if cfg.train_tokenizer else None
    result = run_ab(cfg, data.raw, splits["test"].sessions, out / "best", tok, out / "ab", data.provenance,
                    progress=progress, plots=plots)
    card["decision_rule"] = RULE
    card["ab"] = {k: v for k, v in result.items() if k != "table"} | {"report": str(out / "ab" / "report.json")}
    write_card(out, card)
    print(console_table(result))
    return result


def fine_tune(cfg: Any, out: Path, *, fresh: bool = False, ab_only: bool = False, progress: bool = True,
              plots: bool = True) -> None:
    """Train (or, with ``ab_only``, only the A/B of an earlier run); a failure raises (the script maps it)."""
    if ab_only:
        return run_ab_only(cfg, out, fresh, progress, plots)
    card, data, splits, world = train(cfg, out, fresh, progress)
    close_world(world)  # the A/B runs in rank 0 alone
    if world.main:
        t = card["training"]
        print(f"best step {t['best_step']} of {t['steps']} ({t['stopped']}): validation loss "
              f"{t['best_val_loss']:.5f} (vanilla {t['vanilla_val_loss']:.5f}); checkpoint {out / 'best'}; "
              f"card {out / CARD}")
        if cfg.ab_after_training:
            ab_test(cfg, out, card, data, splits, progress, plots)


def run_ab_only(cfg: Any, out: Path, fresh: bool, progress: bool, plots: bool) -> None:
    """--ab: the A/B of an earlier run's OUT/best, on the test sessions recorded in its card; with --fresh the
    A/B in OUT/ab starts over (the trained model is kept)."""
    import json

    from forecast.owned import check, claim
    from training.data import load_training_bars

    check(out, _owner())
    path = out / CARD
    if not path.is_file() or not (out / "best" / ck.WEIGHTS).is_file():
        raise SettingsError(f"--ab needs a finished fine-tuning run in {out} (card.json and best/); none found")
    card = json.loads(path.read_text())
    data = load_training_bars(cfg)
    splits = splits_of(cfg, data)
    if splits["test"].sessions != card["splits"]["test"]["sessions"]:
        raise SettingsError(f"the test sessions of these bars ({', '.join(splits['test'].sessions)}) are not the "
                            f"ones held out by the run in {out}; use the same data and split settings")
    claim(out, _owner())
    if fresh and (out / "ab").exists():
        shutil.rmtree(out / "ab")
    ab_test(cfg, out, card, data, splits, progress, plots)
