"""``moxin train``: run a variant's stages through ``lightning.Trainer``.

Also the public building blocks for plain ``Trainer.fit`` scripts: ``build_objective``,
``build_datamodule`` and ``build_module`` resolve plugin names to the same objects ``moxin train``
uses.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from moxin_core.callbacks import CheckpointOnTerminate, MetricsHistory, RNGState, TokenThroughput
from moxin_core.checkpointing import FolderCheckpointIO, latest_checkpoint
from moxin_core.corpus import iter_corpus
from moxin_core.data.datamodule import MoxinDataModule, build_mixture
from moxin_core.errors import MoxinError
from moxin_core.export_hf import save_hf_folder, save_tokenizer
from moxin_core.module import MoxinModule
from moxin_core.objectives.base import Objective
from moxin_core.plugins import Registry
from moxin_core.presets import build_model, resolve_config
from moxin_core.reporting import (command_line, package_versions, plot_loss,
                                  sha256_file, write_json_atomic, write_metrics_csv)
from moxin_core.tokenizer import load_tokenizer, train_tokenizer
from moxin_core.variants import (PREVIOUS, VARIANT_PREFIX, DataSpec, HyperParameters, Stage,
                                 Variant, apply_overrides, load_config_file, stage_to_dict)

log = logging.getLogger("moxin")

#: ``tokenizer: embedded`` in a variant: train the project's tokenizer on the embedded corpus.
EMBEDDED_TOKENIZER = "embedded"
EMBEDDED_TOKENIZER_DOCUMENTS = 20000


# ---------------------------------------------------------------------------------------------
# Public building blocks
# ---------------------------------------------------------------------------------------------


def build_objective(registry: Registry, name: str, options: dict[str, Any] | None = None
                    ) -> Objective:
    """The objective registered as ``name``, built with ``options``."""
    factory = registry.get("objectives", name)
    try:
        return factory(**(options or {}))
    except TypeError as exc:
        raise MoxinError(f"Objective {name!r}: bad options {sorted(options or {})} ({exc}).") from None


def build_datamodule(registry: Registry, data: Sequence[DataSpec], objective: Objective,
                     tokenizer: Any, seq_len: int, micro_batch_size: int, seed: int = 0
                     ) -> MoxinDataModule:
    """A datamodule streaming the named, weighted data sources through ``objective``."""
    mixture = build_mixture(registry, data, seed)
    return MoxinDataModule(mixture, objective, tokenizer, seq_len, micro_batch_size)


def build_module(registry: Registry, model: str, objective: Objective, tokenizer: Any,
                 hparams: HyperParameters | None = None) -> MoxinModule:
    """A ``MoxinModule`` around ``model`` (preset, HF folder or hub id) sized to ``tokenizer``."""
    hparams = hparams or HyperParameters()
    if model in registry.names("models"):
        config = resolve_config(model, registry)
        vocab = max(config.vocab_size, len(tokenizer))
        network = build_model(model, registry, vocab_size=vocab)
    else:
        network = build_model(model, registry)
        if len(tokenizer) > network.config.vocab_size:
            raise MoxinError(f"The tokenizer has {len(tokenizer)} entries but model {model!r} only "
                             f"{network.config.vocab_size} embedding rows; use the model's own "
                             "tokenizer.")
    network.train()  # from_pretrained returns a model in eval mode
    if hparams.seq_len > network.config.max_position_embeddings:
        raise MoxinError(f"seq_len {hparams.seq_len} exceeds the model's max_position_embeddings "
                         f"({network.config.max_position_embeddings}).")
    return MoxinModule(network, objective, hparams)


def ensure_embedded_tokenizer(out: Path, vocab_size: int) -> Path:
    """Train the project's tokenizer on the embedded corpus into ``out`` unless it is there."""
    if (out / "tokenizer.model").exists() and (out / "tokenizer_config.json").exists():
        return out
    texts = (r["text"] for r in iter_corpus(seed=0, num_documents=EMBEDDED_TOKENIZER_DOCUMENTS))
    return train_tokenizer(texts, vocab_size, out)


# ---------------------------------------------------------------------------------------------
# Running a variant
# ---------------------------------------------------------------------------------------------


@dataclass
class StageResult:
    name: str
    out_dir: Path
    steps: int
    first_loss: float | None
    last_loss: float | None
    tokens_per_second: float
    tokens: int
    seconds: float
    skipped: bool = False
    evals: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    data_stats: dict[str, int] | None = None


def resolve_variant(registry: Registry, name: str, config: str | None = None,
                    sets: Sequence[str] = (), max_steps: int | None = None) -> Variant:
    """The variant with config-file and ``--set`` overrides applied and validated."""
    variant = copy.deepcopy(registry.get("variants", name)())
    if config:
        apply_overrides(variant, load_config_file(config), f"config file {config!r}")
    overrides = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MoxinError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=3e-4.")
        overrides[key.strip()] = value
    apply_overrides(variant, overrides, "--set")
    if max_steps is not None:
        apply_overrides(variant, {"max_steps": max_steps}, "--max-steps")
    for stage in variant.stages:
        stage.hparams.validate(f"stage {stage.name!r} of variant {variant.name!r}")
        registry.get("objectives", stage.objective)
        if stage.model.startswith(VARIANT_PREFIX):
            registry.get("variants", stage.model[len(VARIANT_PREFIX):])
        elif stage.model != PREVIOUS:
            resolve_config(stage.model, registry)  # unknown preset/path: clear error now
        for evaluator in stage.evaluators:
            registry.get("evaluators", evaluator)
        for spec in stage.data:
            registry.get("data_sources", spec.source)
    return variant


def run_evaluators(registry: Registry, names: Sequence[str], model_path: Path,
                   reference: str | None = None) -> dict[str, dict[str, float]]:
    """Run evaluators on ``model_path``; ``reference`` (the stage's starting model) is passed to
    evaluators that take it (preference accuracy compares against it)."""
    import inspect

    results = {}
    for name in names:
        evaluate = registry.get("evaluators", name)()
        kwargs = ({"reference": reference}
                  if "reference" in inspect.signature(evaluate).parameters else {})
        print(f"Evaluating {model_path} with {name} ...")
        results[name] = {k: float(v) for k, v in evaluate(str(model_path), **kwargs).items()}
    return results


def _variant_result(registry: Registry, reference: str, out: Path, stage: Stage) -> Path:
    """``variant:NAME`` -> the final stage's HF folder of that variant under ``out``."""
    name = reference[len(VARIANT_PREFIX):]
    final = registry.get("variants", name)().stages[-1].name
    folder = out / final / "hf"
    if not (folder / "config.json").exists():
        raise MoxinError(f"Stage {stage.name!r} starts from the final model of variant {name!r}, "
                         f"expected at {folder}, which does not exist yet. Run `moxin train "
                         f"{name} --out {out}` first, or set {stage.name}.model to a checkpoint "
                         "folder or hub id.")
    return folder


def _stage_tokenizer(variant: Variant, stage: Stage, init: str,
                     registry: Registry, out: Path) -> Path | str:
    if stage.model == PREVIOUS or stage.model.startswith(VARIANT_PREFIX):
        return init  # a trained model's folder carries its tokenizer
    spec = stage.tokenizer or variant.tokenizer
    if spec == EMBEDDED_TOKENIZER:
        vocab = resolve_config(stage.model, registry).vocab_size
        return ensure_embedded_tokenizer(out / "tokenizer", vocab)
    if spec:
        return spec
    if stage.model in registry.names("models"):
        raise MoxinError(f"Stage {stage.name!r} starts from preset {stage.model!r} but names no "
                         "tokenizer; set `tokenizer` (a folder, a hub id or 'embedded').")
    return stage.model


def train_variant(name: str, out: str | Path, stage: str | None = None,
                  max_steps: int | None = None, config: str | None = None,
                  sets: Sequence[str] = (), resume: bool = False,
                  registry: Registry | None = None) -> list[StageResult]:
    """Run the stages of variant ``name`` (or only ``stage``) with outputs under ``out``."""
    registry = registry or Registry()
    variant = resolve_variant(registry, name, config, sets, max_steps)
    out = Path(out)
    names = [s.name for s in variant.stages]
    selected = [variant.stage(stage)] if stage else variant.stages
    results = []
    for current in selected:
        index = names.index(current.name)
        if current.model == PREVIOUS:
            if index == 0:
                raise MoxinError(f"Stage {current.name!r} starts from 'previous' but is the first "
                                 f"stage of {variant.name!r}.")
            previous = out / names[index - 1] / "hf"
            if not (previous / "config.json").exists():
                raise MoxinError(f"Stage {current.name!r} starts from the result of stage "
                                 f"{names[index - 1]!r}, which is not in {out} yet; run that stage "
                                 "first (or the whole variant).")
            init = str(previous)
        elif current.model.startswith(VARIANT_PREFIX):
            init = str(_variant_result(registry, current.model, out, current))
        else:
            init = current.model
        tokenizer_dir = _stage_tokenizer(variant, current, init, registry, out)
        results.append(run_stage(variant.name, current, out / current.name, init, tokenizer_dir,
                                 registry, resume))
    return results


def _resolved_config(variant_name: str, stage: Stage, init: str, tokenizer_dir: Path | str) -> dict:
    return {"variant": variant_name, "init": init, "tokenizer": str(tokenizer_dir),
            "stage": stage_to_dict(stage)}


def _check_resumable(stage_dir: Path, resolved: dict, resume: bool) -> dict | None:
    """The previous manifest when resuming; errors when the folder would be overwritten."""
    config_file = stage_dir / "config.yaml"
    if not config_file.exists():
        return None
    if not resume:
        raise MoxinError(f"{stage_dir} already holds a run. Pass --resume to continue it, or "
                         "choose another --out; moxin never overwrites a run.")
    saved = yaml.safe_load(config_file.read_text())
    if saved != yaml.safe_load(yaml.safe_dump(resolved)):
        diffs = _differences(saved, yaml.safe_load(yaml.safe_dump(resolved)))
        raise MoxinError(f"Cannot resume {stage_dir}: the settings differ from the saved run "
                         f"({'; '.join(diffs[:6])}). Resume with the original settings or start a "
                         "new --out.")
    manifest = stage_dir / "manifest.json"
    return yaml.safe_load(manifest.read_text()) if manifest.exists() else None


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


class _DropTips(logging.Filter):
    """Lightning advertises a cloud logger at every fit; moxin's output is about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # per-file load/save bars
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())


def run_stage(variant_name: str, stage: Stage, stage_dir: Path, init: str,
              tokenizer_dir: Path | str, registry: Registry, resume: bool = False) -> StageResult:
    """Train one stage; write config, checkpoints, metrics, plot, HF export and manifest."""
    hp = stage.hparams
    resolved = _resolved_config(variant_name, stage, init, tokenizer_dir)
    previous = _check_resumable(stage_dir, resolved, resume)
    if previous and previous.get("status") == "complete":
        log.info("stage %s already complete in %s; skipping", stage.name, stage_dir)
        return StageResult(stage.name, stage_dir, previous["steps"], previous["first_loss"],
                           previous["last_loss"], previous["tokens_per_second"],
                           previous["tokens"], previous["train_seconds"], skipped=True,
                           evals=previous.get("eval", {}),
                           data_stats=previous.get("data", {}).get("stats"))

    _quiet_libraries()
    tokenizer = load_tokenizer(tokenizer_dir)
    objective = build_objective(registry, stage.objective, stage.objective_options)
    datamodule = build_datamodule(registry, stage.data, objective, tokenizer, hp.seq_len,
                                  hp.micro_batch_size, hp.seed)
    datamodule.check_data()  # bad data fails here, before a model is built

    pl.seed_everything(hp.seed, verbose=False)
    module = build_module(registry, init, objective, tokenizer, hp)

    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    module.model.config.to_json_file(stage_dir / "model_config.json")
    save_tokenizer(tokenizer, stage_dir / "tokenizer", tokenizer_dir)

    checkpoint_dir = stage_dir / "checkpoints"
    throughput, history = TokenThroughput(), MetricsHistory()
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=checkpoint_dir, filename="step={step:06d}",
                        auto_insert_metric_name=False, every_n_train_steps=hp.checkpoint_every,
                        save_top_k=hp.keep_checkpoints, monitor="step", mode="max",
                        enable_version_counter=False),
        TQDMProgressBar(refresh_rate=1),
        LearningRateMonitor(logging_interval="step"),
        throughput,
        history,  # after throughput: it records the tok/s just logged
        RNGState(),
        CheckpointOnTerminate(checkpoint_dir),  # after history: the saved state has this step's row
    ]
    for extra in registry.pm.hook.moxin_callbacks(stage=stage, out_dir=stage_dir):
        callbacks.extend(extra or [])
    trainer = pl.Trainer(
        max_steps=hp.max_steps, accumulate_grad_batches=hp.grad_accum,
        gradient_clip_val=hp.grad_clip or None, precision=hp.precision,
        accelerator=hp.accelerator, devices=hp.devices, num_nodes=hp.num_nodes,
        strategy=hp.strategy, plugins=[FolderCheckpointIO()], callbacks=callbacks,
        logger=[CSVLogger(stage_dir, name="logs", version=""),
                TensorBoardLogger(stage_dir, name="tensorboard", version="")],
        log_every_n_steps=hp.log_every, default_root_dir=stage_dir, limit_val_batches=0,
        num_sanity_val_steps=0, enable_model_summary=False, use_distributed_sampler=False,
    )
    ckpt_path = latest_checkpoint(checkpoint_dir) if resume else None
    if ckpt_path is not None:
        print(f"Resuming stage {stage.name!r} from {ckpt_path}")
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except SIGTERMException:
            last = latest_checkpoint(checkpoint_dir)
            raise MoxinError(f"Stage {stage.name!r} was terminated (SIGTERM) at step "
                             f"{trainer.global_step}. Last checkpoint: {last or 'none yet'}. "
                             "Continue with the same command and --resume.") from None
        except SystemExit:
            # Lightning >= 2.6 ends a fit stopped by Ctrl-C with sys.exit(1) after its shutdown;
            # say where the run stands instead of exiting silently
            if not trainer.interrupted:
                raise
    if trainer.interrupted:
        last = latest_checkpoint(checkpoint_dir)
        raise MoxinError(f"Stage {stage.name!r} was interrupted at step {trainer.global_step}. "
                         f"Last checkpoint: {last or 'none yet'}. Continue with the same command "
                         "and --resume.")
    wall = time.perf_counter() - started
    final = checkpoint_dir / f"step={trainer.global_step:06d}.ckpt"
    if not final.exists():
        # a graceful stop (SIGTERM from a scheduler, a callback) ends between steps: safe to save
        trainer.save_checkpoint(final, weights_only=False)
    if trainer.global_step < hp.max_steps:
        raise MoxinError(f"Stage {stage.name!r} stopped at step {trainer.global_step} of "
                         f"{hp.max_steps} (a termination signal or a callback asked it to stop). "
                         f"Checkpoint saved to {final}; continue with the same command and --resume.")

    if trainer.is_global_zero:
        save_hf_folder(module.model, tokenizer, stage_dir / "hf", tokenizer_dir)
    rows = history.rows
    write_metrics_csv(rows, stage_dir / "metrics.csv")
    plot_loss(rows, stage_dir / "loss.png", f"{variant_name} / {stage.name}")
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    builder = datamodule.stream.builder
    stats = dict(builder.stats) if isinstance(getattr(builder, "stats", None), dict) else None
    evals = run_evaluators(registry, stage.evaluators, stage_dir / "hf", init)
    if evals:
        write_json_atomic(stage_dir / "eval.json", evals)
    result = StageResult(stage.name, stage_dir, trainer.global_step,
                         losses[0] if losses else None, losses[-1] if losses else None,
                         throughput.mean_tokens_per_second, module.tokens_seen, wall,
                         evals=evals, data_stats=stats)
    manifest = {
        "status": "complete",
        "variant": variant_name,
        "stage": stage.name,
        "command": command_line(),
        "seed": hp.seed,
        "init": init,
        "steps": trainer.global_step,
        "tokens": module.tokens_seen,
        "train_seconds": round(wall, 3),
        "tokens_per_second": round(throughput.mean_tokens_per_second, 1),
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "versions": package_versions(),
        "plugins": [{"name": i.name, "distribution": i.distribution, "version": i.version,
                     "error": i.error} for i in registry.pm.infos.values()],
        "data": {"fingerprint": datamodule.mixture.fingerprint(),
                 "sources": [s.source.describe() for s in datamodule.mixture.sources],
                 "packing_efficiency": getattr(builder, "efficiency", None),
                 "stats": stats},
        "eval": evals,
        "tokenizer_sha256": sha256_file(stage_dir / "tokenizer" / "tokenizer.model")
        if (stage_dir / "tokenizer" / "tokenizer.model").exists() else None,
        "checkpoint_sha256": sha256_file(stage_dir / "hf" / "model.safetensors"),
        "hparams": dataclasses.asdict(hp),
    }
    write_json_atomic(stage_dir / "manifest.json", manifest)
    return result
