"""PNG charts for people: the training loss curve, the service's tier sizes and ingest rate.

matplotlib is the optional extra `memory_tiers[plots]`: the daemon never draws, so its image
does not carry it. `available()` tells whether it is installed; drawing without it raises
`PlotsUnavailable` with the install command.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MemoryTiersError

if TYPE_CHECKING:
    from .status import Sample

INSTALL_HINT = "pip install 'memory_tiers[plots]'"
"""What installs matplotlib for the plots."""


class PlotsUnavailable(MemoryTiersError):
    """matplotlib, the `plots` extra, is not installed."""


def available() -> bool:
    """Whether matplotlib can be imported, so the plots can be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    """matplotlib.pyplot, drawing to files only (no display on servers)."""
    try:
        import matplotlib
    except ImportError as e:
        raise PlotsUnavailable(f"drawing a plot needs matplotlib: {INSTALL_HINT}") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(metrics: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Train and validation loss per epoch, the best epoch marked, saved as a PNG."""
    plt = _pyplot()
    path = Path(path)
    figure = loss_figure(metrics, title)
    figure.savefig(path)
    plt.close(figure)
    return path


def loss_figure(metrics: Mapping[str, Any], title: str = "") -> Any:
    """The matplotlib Figure of `plot_loss_curve` (the caller closes it)."""
    from matplotlib.ticker import MaxNLocator

    epochs = range(1, len(metrics["train_loss"]) + 1)
    figure, axes = _pyplot().subplots(figsize=(7, 4), dpi=100)
    axes.plot(epochs, metrics["train_loss"], label="train (weighted STM/IM/LTM)")
    axes.plot(epochs, metrics["val_loss"], label="validation")
    axes.axvline(metrics["best_epoch"], color="grey", linestyle=":", label="best epoch")
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs: no tick at 1.5
    axes.set_ylabel("loss (MSE)")
    axes.set_yscale("log")
    axes.set_title(title or "autoencoder training")
    axes.legend()
    figure.tight_layout()
    return figure


def plot_service_series(samples: Sequence[Sample], path: str | Path, title: str = "") -> Path:
    """Tier sizes and the ingest rate over time, from the stats series, saved as a PNG."""
    from .constants import TIERS
    from .status import ingest_rates

    plt = _pyplot()
    path = Path(path)
    figure, (sizes, rates) = plt.subplots(2, 1, figsize=(8, 6), dpi=100, sharex=True)
    times = [_utc(sample.at) for sample in samples]
    for tier in TIERS:
        sizes.plot(times, [s.tiers.get(tier, 0) for s in samples], marker=".", label=tier.upper())
    sizes.set_ylabel("memories")
    sizes.set_title(title or "memory tiers")
    sizes.legend()
    rate = ingest_rates(samples)
    rates.plot([_utc(at) for at, _ in rate], [r for _, r in rate], marker=".", color="black")
    rates.set_ylabel("entries read / s")
    rates.set_xlabel("time (UTC)")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc)
