"""``moxin reproduce RUN_DIR``: run a finished run again from its manifests and check the weights.

Every stage's manifest records the variant as it ran (every ``--set``/``--config`` override
applied) in the YAML variant-file layout, the working directory, the seeds, the package and
plugin versions and the SHA-256 of the exported weights. Reproducing writes that variant to
``NEW/.reproduce/VARIANT.yaml`` and trains its stages into ``NEW`` with ``moxin train``'s own
code, in the order they first ran, then compares the weights. On CPU with the same package
versions they are bit-identical; when they are not, the report names the first logged step whose
loss differs and every version that differs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moxin_core.errors import MoxinError
from moxin_core.reporting import sha256_file, write_json_atomic

WEIGHTS = Path("hf") / "model.safetensors"


@dataclass
class StageCheck:
    """How one stage's reproduction compares with the original."""

    stage: str
    original: str | None
    reproduced: str | None
    first_difference: dict[str, Any] | None = None
    version_differences: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.original is not None and self.original == self.reproduced

    def lines(self) -> list[str]:
        if self.identical:
            return [f"stage {self.stage}: bit-identical weights (sha256 {self.original[:16]}...)"]
        out = [f"stage {self.stage}: weights DIFFER (original sha256 {str(self.original)[:16]}..., "
               f"reproduced {str(self.reproduced)[:16]}...)"]
        diff = self.first_difference
        if diff:
            out.append(f"    first logged step whose loss differs: step {diff['step']} "
                       f"(original {diff['original']!r}, reproduced {diff['reproduced']!r})")
        else:
            out.append("    every logged loss is equal: the difference comes after the last "
                       "logged step (the last update or the export)")
        out += [f"    differs: {d}" for d in self.version_differences] or [
            "    package, plugin and hardware records are the same"]
        return out


def stage_manifests(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The stage folders of a run with their manifests, in the order the stages started."""
    if not run_dir.is_dir():
        raise MoxinError(f"{run_dir} is not a folder; `moxin reproduce` takes the --out folder "
                         "of a `moxin train` run.")
    found = []
    for child in sorted(run_dir.iterdir()):
        manifest = child / "manifest.json"
        if child.is_dir() and manifest.is_file():
            try:
                found.append((child, json.loads(manifest.read_text())))
            except json.JSONDecodeError as error:
                raise MoxinError(f"{manifest} is not valid JSON ({error}); it cannot be "
                                 "reproduced from.") from None
    if not found:
        raise MoxinError(f"{run_dir} holds no stage manifests (STAGE/manifest.json); pass the "
                         "--out folder of a `moxin train` run.")
    def order(item: tuple[Path, dict[str, Any]]) -> tuple[str, int, str]:
        # when the start times tie (manifests with second precision), a variant's own stage
        # order decides
        folder, manifest = item
        stages = [s.get("name") for s in (manifest.get("variant_record") or {}).get("stages", [])]
        index = stages.index(folder.name) if folder.name in stages else len(stages)
        return (manifest.get("started_at") or "", index, folder.name)

    return sorted(found, key=order)


def _first_loss_difference(original: Path, reproduced: Path) -> dict[str, Any] | None:
    def losses(path: Path) -> dict[int, str]:
        if not path.is_file():
            return {}
        with path.open() as handle:
            return {int(row["step"]): row.get("train/loss", "") for row in csv.DictReader(handle)}

    before, after = losses(original / "metrics.csv"), losses(reproduced / "metrics.csv")
    for step in sorted(set(before) | set(after)):
        if before.get(step) != after.get(step):
            return {"step": step, "original": before.get(step), "reproduced": after.get(step)}
    return None


def _record_differences(original: dict[str, Any], reproduced: dict[str, Any]) -> list[str]:
    out = []
    for group in ("versions", "hardware"):
        a, b = original.get(group) or {}, reproduced.get(group) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key) and key not in ("host",):
                out.append(f"{group}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    plugins = [{p["distribution"]: p["version"] for p in m.get("plugins") or []}
               for m in (original, reproduced)]
    for name in sorted(set(plugins[0]) | set(plugins[1])):
        if plugins[0].get(name) != plugins[1].get(name):
            out.append(f"plugin {name}: {plugins[0].get(name)!r} -> {plugins[1].get(name)!r}")
    return out


def reproduce_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                  stage: str | None = None, registry: Any = None) -> list[StageCheck]:
    """Re-run the stages of ``run_dir`` (or only ``stage``) into ``out`` and compare weights."""
    from moxin_core.plugins import Registry
    from moxin_core.training.stage import train_variant

    registry = registry or Registry()
    run_dir = Path(run_dir).expanduser().resolve()
    stages = stage_manifests(run_dir)
    names = [folder.name for folder, _ in stages]
    if stage is not None and stage not in names:
        raise MoxinError(f"{run_dir} has no stage {stage!r}; its stages are: "
                         f"{', '.join(names)}.")
    for folder, manifest in stages:
        if manifest.get("status") != "complete":
            raise MoxinError(f"Stage {folder.name!r} in {run_dir} did not complete (status "
                             f"{manifest.get('status')!r}); finish it with `moxin train ... "
                             "--resume` before reproducing the run.")
        if not manifest.get("variant_record"):
            raise MoxinError(f"{folder / 'manifest.json'} has no variant record (written by an "
                             "older moxin); that run cannot be reproduced from its manifests.")
    target = Path(out).expanduser().resolve() if out else run_dir.with_name(
        run_dir.name + "-reproduced")
    if target.exists() and any(target.iterdir()):
        raise MoxinError(f"{target} exists and is not empty; choose another --out for the "
                         "reproduction.")
    selected = [item for item in stages if stage in (None, item[0].name)]
    if stage is not None:
        # the other stages' models are inputs here: copied, not trained again
        for folder, _ in stages:
            if folder.name != stage and (folder / "hf").is_dir():
                shutil.copytree(folder / "hf", target / folder.name / "hf")
    variants_dir = target / ".reproduce"
    variants_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for _, manifest in selected:
        record = manifest["variant_record"]
        path = variants_dir / f"{record['name']}.yaml"
        path.write_text(yaml.safe_dump(record, sort_keys=False))
        files[manifest["stage"], record["name"]] = path
    checks = []
    cwd = os.getcwd()
    try:
        for folder, manifest in selected:
            # relative data paths in the record are relative to where the run started
            if manifest.get("cwd") and Path(manifest["cwd"]).is_dir():
                os.chdir(manifest["cwd"])
            print(f"Reproducing stage {folder.name!r} of {manifest['variant']} into {target}")
            train_variant(str(files[manifest["stage"], manifest["variant_record"]["name"]]),
                          target, stage=manifest["stage"], registry=registry)
            os.chdir(cwd)
            new_dir = target / folder.name
            new_manifest = json.loads((new_dir / "manifest.json").read_text())
            check = StageCheck(folder.name, manifest.get("checkpoint_sha256"),
                               sha256_file(new_dir / WEIGHTS)
                               if (new_dir / WEIGHTS).is_file() else None)
            if not check.identical:
                check.first_difference = _first_loss_difference(folder, new_dir)
                check.version_differences = _record_differences(manifest, new_manifest)
            checks.append(check)
    finally:
        os.chdir(cwd)
    write_json_atomic(target / "reproduce.json", {
        "original": str(run_dir), "reproduced": str(target),
        "identical": all(c.identical for c in checks),
        "stages": [{"stage": c.stage, "identical": c.identical, "original_sha256": c.original,
                    "reproduced_sha256": c.reproduced, "first_difference": c.first_difference,
                    "differences": c.version_differences} for c in checks]})
    return checks
