"""The backtest's PNG charts: reliability, PIT histograms, coverage by step, the toy rule's equity."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.evaluate import BANDS, DIAGRAM_MIN_BIN, Evaluation


def write_plots(evals: dict[str, Evaluation], report: dict[str, Any], out_dir: Path) -> list[str]:
    """Reliability diagram, PIT histograms, coverage by step and the toy rule's equity curve (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(evals)
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    files = []

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":")
    for n in names:
        for kind, ls in (("raw", "-"), ("calibrated", "--")):
            tab = pd.DataFrame(report["forecasters"][n]["p_up"][kind]["reliability_table"])
            tab = tab[tab["n"] >= DIAGRAM_MIN_BIN] if len(tab) else tab  # a bin of 3 outcomes is noise
            if len(tab):
                ax.plot(tab["mean_p"], tab["obs_freq"], ls, marker="o", ms=3, color=colours[n],
                        label=f"{n} ({kind})")
    ax.set(xlabel="forecast p_up (bin mean)", ylabel="observed frequency of close > now", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability of p_up (dashed: walk-forward calibrated; bins of >= {DIAGRAM_MIN_BIN})")
    _legend_or_say(ax, f"no data yet: no probability bin holds {DIAGRAM_MIN_BIN} outcomes\n(more origins, or "
                       "a smaller --every, fill the diagram)")
    files.append(_save(fig, out_dir / "reliability.png"))

    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, n in zip(axes[0], names):
        h = report["forecasters"][n]["close_end"]["pit_histogram"]
        counts = np.array(h["counts"], dtype=float)
        width = 1 / counts.size
        ax.bar(np.arange(counts.size) * width, counts / max(counts.sum(), 1) / width, width=width, align="edge",
               color=colours[n], alpha=0.7)
        ax.axhline(1.0, color="black", lw=1, ls=":")
        ax.set(title=n, xlabel="PIT of the horizon close", xlim=(0, 1))
    axes[0][0].set_ylabel("density (flat = calibrated)")
    files.append(_save(fig, out_dir / "pit_histogram.png"))

    fig, axes = plt.subplots(1, len(BANDS), figsize=(4.5 * len(BANDS), 3.5), squeeze=False)
    for ax, band in zip(axes[0], BANDS):
        for n in names:
            cov = report["forecasters"][n]["coverage_by_step"][band.name]
            steps = np.arange(1, len(cov["raw"]) + 1)
            ax.plot(steps, np.array(cov["raw"], dtype=float), "-", color=colours[n], label=f"{n}")
            ax.plot(steps, np.array(cov["calibrated"], dtype=float), "--", color=colours[n])
        ax.axhline(band.nominal, color="black", lw=1, ls=":")
        ax.set(title=f"{band.name} band (nominal {band.nominal:.0%})", xlabel="minutes ahead", ylim=(0, 1))
    axes[0][0].set_ylabel("coverage (dashed: calibrated)")
    _legend_or_say(axes[0][0], "no data yet: no forecast was scored")
    files.append(_save(fig, out_dir / "coverage_by_step.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    for n in names:
        for kind, ls in (("raw", "-"), ("calibrated", "--")):
            trades = report["forecasters"][n]["toy_rule"][kind]["trades"]
            if trades:
                t = pd.to_datetime([x["exit"] for x in trades], utc=True)
                ax.step(t, np.cumsum([x["ret_bp"] for x in trades]), ls, where="post", color=colours[n],
                        label=f"{n} ({kind}, {len(trades)} trades)")
    ax.axhline(0, color="grey", lw=1)
    ax.set(title="Toy rule, net of fees and slippage", ylabel="cumulative net return (bp)")
    rule = report.get("settings", {})
    _legend_or_say(ax, f"no trades: the toy rule never entered (p_up >= {rule.get('rule_p_up')} with "
                       f"zscore_mid <= {rule.get('rule_z')} never happened)")
    fig.autofmt_xdate()
    files.append(_save(fig, out_dir / "equity.png"))
    return files


def _legend_or_say(ax: Any, empty: str) -> None:
    """The legend of the labelled lines, or, when the chart has none, a sentence saying why it is empty (an empty
    legend would read as a drawing error, and matplotlib warns about it)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="dimgrey",
                wrap=True)


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)  # readers never see half a PNG
    return path.name
