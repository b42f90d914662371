"""Plots of a `tunesmith compare` report: ID vs OOD accuracy per strategy, and learning curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tunesmith.train.track import read_metrics  # noqa: E402


def plot_id_vs_ood(rows: list[dict], id_metric: str, ood_metrics: list[str], path: Path) -> Path | None:
    """One point per strategy (mean over seeds, bars = min..max), one panel per OOD metric."""
    panels = [m for m in ood_metrics if any(m in r["ood"] for r in rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=True):
        for i, row in enumerate(r for r in rows if metric in r["ood"]):
            x, y = row["id"], row["ood"][metric]
            ax.errorbar(x["mean"], y["mean"], xerr=[[x["mean"] - x["min"]], [x["max"] - x["mean"]]],
                        yerr=[[y["mean"] - y["min"]], [y["max"] - y["mean"]]], fmt="o", capsize=3,
                        color=f"C{i}", label=f"{row['strategy']} (n={row['runs']})")
        ax.set_xlabel(f"{id_metric} (in distribution)")
        ax.set_ylabel(f"{metric} (out of distribution)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("mean over seeds; bars span min..max", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(runs: list[tuple[str, Path]], path: Path, metric: str = "val_accuracy") -> Path | None:
    """Validation metric against optimizer step, one colour per strategy, one line per seed."""
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    colours: dict[str, str] = {}
    plotted = False
    for strategy, run_dir in runs:
        points = [(r["step"], r[metric]) for r in read_metrics(run_dir) if metric in r]
        if not points:
            continue
        colour = colours.setdefault(strategy, f"C{len(colours)}")
        label = None if strategy in ax.get_legend_handles_labels()[1] else strategy  # one legend entry each
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3, alpha=0.75, color=colour, label=label)
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step (all stages)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
