"""PNG plots of a run: loss curves, evaluation metrics, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tunesmith.train.track import read_metrics  # noqa: E402


def plot_run(run_dir: Path) -> list[Path]:
    """plots/loss.png (train and validation loss) and plots/metrics.png (other validation metrics)."""
    records = read_metrics(run_dir)
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    train = [r for r in records if "train_loss" in r]
    evals = [r for r in records if any(k.startswith("val_") for k in r)]
    written = []
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train loss")
    if evals and "val_loss" in evals[0]:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=110)
    plt.close(fig)
    written.append(out_dir / "loss.png")
    skip = ("step", "epoch", "pause", "stage")
    names = sorted({k for r in evals for k in r if k not in skip and not k.endswith(("_loss", "_perplexity"))
                    and isinstance(r[k], (int, float))})  # validation and any eval sets evaluated alongside
    if names:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in names:
            points = [(r["step"], r[name]) for r in evals if name in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=name)
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{run_dir.name}: evaluation metrics")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "metrics.png", dpi=110)
        plt.close(fig)
        written.append(out_dir / "metrics.png")
    return written


def plot_confusion(confusion: list[list[int]], label_names: list[str], path: Path) -> Path:
    k = len(label_names)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * k + 2), max(3.5, 0.6 * k + 1.5)))
    im = ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), label_names, rotation=45, ha="right")
    ax.set_yticks(range(k), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        peak = max(max(row) for row in confusion) or 1
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(confusion[i][j]), ha="center", va="center",
                        color="white" if confusion[i][j] > peak / 2 else "black", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_final_accuracy(final: dict[str, float], path: Path) -> Path | None:
    """A bar per evaluated split (validation, test and every eval set): ID vs OOD at a glance."""
    bars = [(k[: -len("_accuracy")], v) for k, v in final.items() if k.endswith("_accuracy")]
    if len(bars) < 3:  # validation and test alone need no picture
        return None
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(bars) + 1.5), 3.6))
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=["C0" if b[0] in ("val", "test") else "C3" for b in bars])
    for i, (_, v) in enumerate(bars):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{path.parent.parent.name}: final accuracy (blue: in distribution, red: eval sets)", fontsize=9)
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
