"""What a run leaves for people: metrics.csv, loss.png, manifest.json."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def package_versions(names: tuple[str, ...] = ("moxin-core", "torch", "lightning", "transformers",
                                               "datasets", "sentencepiece", "pluggy")) -> dict:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_metrics_csv(rows: list[dict[str, float]], path: Path) -> None:
    columns = ["step"] + sorted({k for row in rows for k in row} - {"step"})
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})


def metric_ends(stage_dir: Path, key: str = "train/reward",
                window: int = 5) -> tuple[float, float] | None:
    """Mean of ``key`` over a stage's first and last ``window`` logged steps (from its
    ``metrics.csv``), or None when it logged no such value: how an RL stage's reward went,
    which its loss does not show."""
    path = Path(stage_dir) / "metrics.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        values = [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
    if not values:
        return None
    window = min(window, len(values))
    return sum(values[:window]) / window, sum(values[-window:]) / window


def _ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out, current = [], None
    for value in values:
        current = value if current is None else alpha * value + (1 - alpha) * current
        out.append(current)
    return out


def plot_loss(rows: list[dict[str, float]], path: Path, title: str,
              loss_key: str = "train/loss") -> None:
    """Loss (raw and smoothed) with learning rate and tokens/s panels. ``loss_key``: the logged
    metric plotted as the loss (the per-token loss when the objective's loss is a sum)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_rows = [r for r in rows if loss_key in r]
    fig, (ax_loss, ax_lr, ax_tps) = plt.subplots(
        3, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1, 1]})
    if loss_rows:
        steps = [r["step"] + 1 for r in loss_rows]  # logged after the optimizer step
        losses = [r[loss_key] for r in loss_rows]
        ax_loss.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
        ax_loss.plot(steps, _ema(losses), color="tab:blue", linewidth=2, label="loss (EMA 0.1)")
        ax_loss.annotate(f"{losses[0]:.2f}", (steps[0], losses[0]), textcoords="offset points",
                         xytext=(5, -10))
        ax_loss.annotate(f"{losses[-1]:.2f}", (steps[-1], losses[-1]), textcoords="offset points",
                         xytext=(-30, 8))
        ax_loss.legend(loc="upper right")
    # nats/token for lm and for a summed loss's per-token metric; the DPO loss otherwise
    ax_loss.set_ylabel("train loss" if loss_key == "train/loss" else
                       f"train loss per token ({loss_key.removeprefix('train/')})")
    ax_loss.set_title(title)
    ax_loss.grid(alpha=0.3)
    lr_key = "lr" if any("lr" in r for r in rows) else None
    if lr_key:
        lr_rows = [r for r in rows if lr_key in r]
        ax_lr.plot([r["step"] + 1 for r in lr_rows], [r[lr_key] for r in lr_rows], color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    tps_rows = [r for r in rows if "tok/s" in r]
    if tps_rows:
        ax_tps.plot([r["step"] + 1 for r in tps_rows], [r["tok/s"] for r in tps_rows], color="tab:green")
    ax_tps.set_ylabel("tokens/s")
    ax_tps.set_xlabel("optimizer step")
    ax_tps.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
