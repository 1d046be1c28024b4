"""Reports of ``moxin eval``: markdown tables in the Moxin README's layout (percentages, two
decimals, an average column), the README's reference rows beside the model's when the suite is
one of its tables, a comparison of several models, a bar chart, and JSON for scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moxin_plugin_lmeval.run import Scores
from moxin_plugin_lmeval.suites import SUITES

REFERENCES_FILE = Path(__file__).parent / "references.json"


def references() -> dict[str, Any]:
    """The Moxin README's tables (``{"source": ..., "tables": {key: [rows]}}``)."""
    return json.loads(REFERENCES_FILE.read_text())


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def table(runs: list[Scores], reference_rows: list[dict] | None = None) -> str:
    """A markdown table: one row per reference model (already in percent) then per run."""
    labels = [c.label for c in runs[0].columns]
    lines = ["| Models | " + " | ".join(labels) + " | Ave |",
             "|:--|" + "--:|" * (len(labels) + 1)]
    for row in reference_rows or []:
        cells = [f"{row['scores'].get(label, float('nan')):.2f}" for label in labels]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {row['average']:.2f} |")
    for run in runs:
        cells = [_cell(run.values.get(label)) for label in labels]
        lines.append(f"| **{run.label}** | " + " | ".join(cells) + f" | {_cell(run.average)} |")
    return "\n".join(lines)


def report(runs: list[Scores], suite: str | None) -> str:
    """The text ``moxin eval`` prints: the runs' table, and each README table of the suite with
    the runs beside its reference rows."""
    shots = ", ".join(f"{c.label} {c.shots}-shot {c.metric}" if c.shots >= 0 else
                      f"{c.label} {c.metric} (task's shots)" for c in runs[0].columns)
    parts = [f"lm-eval scores in % ({shots}):", "", table(runs)]
    if suite and SUITES[suite].references:
        data = references()
        for key in SUITES[suite].references:
            parts += ["", f"Beside the Moxin README's {key} table:", "",
                      table(runs, data["tables"][key])]
        parts += ["", f"Reference rows: {data['source']}"]
    return "\n".join(parts)


def as_json(runs: list[Scores], suite: str | None) -> dict[str, Any]:
    return {"suite": suite,
            "columns": [{"label": c.label, "task": c.task, "shots": c.shots, "metric": c.metric}
                        for c in runs[0].columns],
            "models": [{"model": r.label, "scores": dict(r.values), "average": r.average}
                       for r in runs]}


def bar_chart(runs: list[Scores], out: Path, title: str) -> Path:
    """Grouped bars: one group per column (and the average), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [c.label for c in runs[0].columns] + ["Ave"]
    width = 0.8 / len(runs)
    figure, axis = plt.subplots(figsize=(max(6, 1.4 * len(labels) * max(1, len(runs) / 3)), 4))
    for i, run in enumerate(runs):
        values = [run.values.get(label) for label in labels[:-1]] + [run.average]
        axis.bar([x + i * width for x in range(len(labels))],
                 [100 * (v or 0.0) for v in values], width, label=run.label)
    axis.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(labels))], labels)
    axis.set_ylabel("score (%)")
    axis.set_ylim(0, 100)
    axis.set_title(title)
    axis.legend(fontsize="small")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
