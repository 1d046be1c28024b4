"""The openness report of an export: ``MOF.md`` and ``mof.json`` beside the model.

The Model Openness Framework (Linux Foundation, arXiv:2403.13784) lists what a fully open model
release contains: code (architecture, data pre-processing, training, inference, evaluation), data
(training data and its card), the model (final and intermediate weights, configs), logs,
evaluation results, cards, licences and a paper. moxin derives the report from what is really
there: the export folder and the manifests of the stages that made the model (the stage it came
from, the stage that one started from, and so on). A component is ``present`` only when the
export contains it or a manifest links it to something that still exists; otherwise the report
says what is missing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moxin_core.reporting import write_json_atomic

MOF_JSON = "mof.json"
MOF_MD = "MOF.md"


@dataclass
class Component:
    name: str
    present: bool
    where: str  # what the export contains or links, or why it is absent


def lineage(stage_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(stage folder, manifest)`` of ``stage_dir`` and of every stage its model came from
    (``init`` and composite ``references`` that are stage exports), nearest first."""
    found: list[tuple[Path, dict[str, Any]]] = []
    todo, seen = [Path(stage_dir)], set()
    while todo:
        folder = todo.pop(0).resolve()
        manifest_file = folder / "manifest.json"
        if folder in seen or not manifest_file.is_file():
            continue
        seen.add(folder)
        try:
            manifest = json.loads(manifest_file.read_text())
        except json.JSONDecodeError:
            continue
        found.append((folder, manifest))
        cwd = Path(manifest.get("cwd") or ".")
        for source in [manifest.get("init"), *(manifest.get("references") or {}).values()]:
            if source:
                path = Path(source) if Path(source).is_absolute() else cwd / source
                if path.name == "hf":
                    todo.append(path.parent)
    return found


def _files(folder: Path, *patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in folder.glob(pattern) if p.is_file())


def _all(stages: list[tuple[Path, dict]], test: Any) -> tuple[bool, list[str]]:
    """Whether ``test(folder, manifest)`` (a description or None) holds for every stage."""
    notes, ok = [], bool(stages)
    for folder, manifest in stages:
        note = test(folder, manifest)
        ok = ok and note is not None
        notes.append(f"{folder.name}: {note if note is not None else 'missing'}")
    return ok, notes


def stage_of(model_path: str | Path) -> Path | None:
    """The stage folder a model path belongs to (a stage folder or its ``hf/``), if any."""
    path = Path(model_path).expanduser()
    for candidate in (path, path.parent):
        if (candidate / "manifest.json").is_file():
            return candidate
    return None


def openness(export: Path, stage_dir: Path | None) -> list[Component]:
    """The MOF components of ``export`` (a model folder, or one file such as a GGUF) made by
    the stage in ``stage_dir`` (None: an export whose origin moxin does not know)."""
    export = Path(export)
    single = export.is_file()
    export_dir = export.parent if single else export
    stages = lineage(stage_dir) if stage_dir else []
    weights = [export] if single else _files(export_dir, "*.safetensors", "*.gguf")
    config = ([export] if export.suffix == ".gguf" else []) if single else \
        _files(export_dir, "config.json", "*.gguf", "moxin.json")
    rel = [p.name for p in weights]
    no_run = "no training run recorded (the export's stage manifests are missing)"
    components = [
        Component("Model architecture", bool(config),
                  f"{', '.join(p.name for p in config)} (architecture and sizes)" if config
                  else "no config.json or GGUF metadata in the export"),
        Component("Model parameters (final)", bool(weights),
                  ", ".join(rel) if weights else "no weight file in the export"),
    ]

    def checkpoints(folder: Path, manifest: dict) -> str | None:
        kept = [name for name in manifest.get("checkpoints") or {}
                if (folder / "checkpoints" / name).is_dir()]
        return f"{len(kept)} checkpoint(s) in {folder / 'checkpoints'}" if kept else None

    def versions(folder: Path, manifest: dict) -> str | None:
        found = manifest.get("versions") or {}
        if not found.get("moxin-core"):
            return None
        plugins = [f"{p['distribution']} {p['version']}" for p in manifest.get("plugins") or []
                   if p.get("distribution") and p.get("distribution") != "moxin-core"]
        commit = (manifest.get("code_git") or {}).get("commit")
        return (f"moxin-core {found['moxin-core']}" + (f" @ {commit[:12]}" if commit else "")
                + (f" + {', '.join(plugins)}" if plugins else ""))

    def data(folder: Path, manifest: dict) -> str | None:
        recorded = manifest.get("data") or {}
        if not recorded.get("fingerprint") or not recorded.get("sources"):
            return None
        return f"{'; '.join(recorded['sources'])} (fingerprint {recorded['fingerprint']})"

    def data_card(folder: Path, manifest: dict) -> str | None:
        cards = _files(folder, "DATA_CARD.md", "data_card.md", "datacard.md")
        return str(cards[0]) if cards else None

    def configs(folder: Path, manifest: dict) -> str | None:
        return str(folder / "config.yaml") if (folder / "config.yaml").is_file() else None

    def logs(folder: Path, manifest: dict) -> str | None:
        return str(folder / "metrics.csv") if (folder / "metrics.csv").is_file() else None

    def evaluated(folder: Path, manifest: dict) -> str | None:
        return ", ".join(manifest.get("eval") or {}) or None

    def results(folder: Path, manifest: dict) -> str | None:
        return str(folder / "eval.json") if (folder / "eval.json").is_file() else None

    for name, test in [("Model parameters (intermediate)", checkpoints),
                       ("Training code", versions),
                       ("Data pre-processing code", versions),
                       ("Training data", data),
                       ("Data card", data_card),
                       ("Configs", configs),
                       ("Training logs", logs)]:
        ok, notes = _all(stages, test)
        components.append(Component(name, ok, "; ".join(notes) if stages else no_run))
    if (export_dir / "config.json").is_file() and not single:
        inference = "loads with transformers (AutoModelForCausalLM) and `moxin generate`"
    elif any(p.suffix == ".gguf" for p in weights):
        inference = "runs in llama.cpp (`moxin generate`, `moxin chat`)"
    elif (export_dir / "moxin.json").is_file() and not single:
        inference = "loads through its moxin model family (`moxin chat`; moxin.json names it)"
    else:
        inference = ""
    components.append(Component("Inference code", bool(inference),
                                inference or "no format a public runtime loads"))
    # evaluation: the final stage's evaluators (earlier stages' scores are theirs, not this model's)
    final = stages[:1]
    ok, notes = _all(final, evaluated)
    components.append(Component("Evaluation code", ok, "; ".join(notes) if final else no_run))
    ok, notes = _all(final, results)
    components.append(Component("Evaluation results", ok, "; ".join(notes) if final else no_run))
    card = export.with_name(export.name + ".README.md") if single else export_dir / "README.md"
    components.append(Component("Model card", card.is_file(),
                                "README.md" if card.is_file() else "no README.md in the export"))
    licences = (_files(export_dir, export.name + ".LICENSE*") if single
                else _files(export_dir, "LICENSE*", "LICENCE*"))
    components.append(Component("Licences", bool(licences),
                                ", ".join(p.name for p in licences) if licences else
                                "no LICENSE file in the export"))
    paper = card.is_file() and "arxiv.org/abs/" in card.read_text(errors="replace")
    components.append(Component("Research paper", paper,
                                "linked from README.md" if paper else
                                "no paper linked from the export's README.md"))
    return components


def report_paths(export: str | Path) -> tuple[Path, Path]:
    """``(MOF.md, mof.json)`` of an export: inside a model folder, beside a single file
    (``model.gguf.MOF.md``)."""
    export = Path(export)
    if export.is_file():
        return (export.with_name(f"{export.name}.{MOF_MD}"),
                export.with_name(f"{export.name}.{MOF_JSON}"))
    return export / MOF_MD, export / MOF_JSON


def write_openness_report(export: str | Path, stage_dir: str | Path | None) -> Path:
    """Write the openness report of ``export`` (a model folder: ``MOF.md`` and ``mof.json``
    inside it; one file: ``FILE.MOF.md``, ``FILE.mof.json`` beside it), derived from
    ``stage_dir``'s manifests and their lineage; returns the markdown file."""
    components = openness(Path(export), Path(stage_dir) if stage_dir else None)
    present = sum(c.present for c in components)
    path, json_path = report_paths(export)
    write_json_atomic(json_path, {
        "framework": "Model Openness Framework (arXiv:2403.13784)",
        "stage": str(stage_dir) if stage_dir else None,
        "present": present, "total": len(components),
        "components": [asdict(c) for c in components]})
    lines = ["# Openness report (Model Openness Framework)", "",
             f"{present} of {len(components)} components present. Derived by moxin from this "
             "export and the manifests of the stages that made it"
             + (f" (from {stage_dir})." if stage_dir else "; no stage is known for it."), "",
             "| Component | Present | Where / what is missing |", "|---|---|---|"]
    for c in components:
        where = c.where.replace("|", "\\|")
        lines.append(f"| {c.name} | {'yes' if c.present else 'no'} | {where} |")
    path.write_text("\n".join(lines) + "\n")
    return path
