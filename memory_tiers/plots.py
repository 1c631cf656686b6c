"""PNG charts for people: the training loss curve."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt


def plot_loss_curve(metrics: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Train and validation loss per epoch, the best epoch marked, saved as a PNG."""
    path = Path(path)
    epochs = range(1, len(metrics["train_loss"]) + 1)
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.plot(epochs, metrics["train_loss"], label="train (weighted STM/IM/LTM)")
    axes.plot(epochs, metrics["val_loss"], label="validation")
    axes.axvline(metrics["best_epoch"], color="grey", linestyle=":", label="best epoch")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss (MSE)")
    axes.set_yscale("log")
    axes.set_title(title or "autoencoder training")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
