"""``moxin train``: run a variant's stages through ``lightning.Trainer``.

One stage: resolve where it starts (a preset, a folder, ``previous``, ``variant:NAME``) and its
family, build the objective, data and module, write the stage folder, fit, then export the model
through its family, run the evaluators and write the manifest.

**Several processes.** With ``devices``/``num_nodes`` above one, Lightning's launcher re-runs the
same command for the other ranks (or ``torchrun``/SLURM start them all). Every rank runs this
code; only global rank 0 writes the stage folder before the fit (the others read it), the fit is
collective, the export gathers a sharded model's weights and rank 0 writes them, evaluators run
once on rank 0, and barriers keep the ranks together between stages.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from moxin_core import distributed
from moxin_core.callbacks import (CheckpointOnTerminate, MetricsHistory, RNGState,
                                   StepProgressBar, TokenThroughput, kept_random_state)
from moxin_core.checkpointing import (CheckpointWriteError, FolderCheckpointIO,
                                      checkpoint_hashes, latest_checkpoint)
from moxin_core.errors import MoxinError
from moxin_core.export import model_from_state, save_atomically, write_stage_model
from moxin_core.lora import merged_model, save_adapter
from moxin_core.models.family import resolve_model
from moxin_core.mof import write_openness_report
from moxin_core.module import NonFiniteError
from moxin_core.plugins import Registry
from moxin_core.reporting import (command_line, package_versions, plot_loss, sha256_file,
                                  write_json_atomic, write_metrics_csv)
from moxin_core.runs import RunLock, git_commit, hardware, now, peak_memory
from moxin_core.strategies import SHARDED, build_strategy, is_sharded
from moxin_core.training.blocks import build_datamodule, build_module, build_objective
from moxin_core.training.resolve import (evaluator_factory, preset_references, resolve_variant,
                                         stage_processor, stage_start)
from moxin_core.variants import Stage, Variant, evaluator_specs, stage_to_dict

log = logging.getLogger("moxin")


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
    #: (first, last) loss per token when the objective's loss is a sum
    token_loss: tuple[float, float] | None = None
    world_size: int = 1
    #: the evaluators' scores of the model the stage started from (``Stage.evaluate_start``)
    start_evals: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


def run_evaluators(registry: Registry, evaluators: Sequence[str | dict[str, Any]],
                   model_path: Path, reference: str | None = None) -> dict[str, dict[str, float]]:
    """Run evaluators (names, or ``{name: NAME, OPTION: VALUE}`` entries whose options go to the
    evaluator's factory) on ``model_path``; ``reference`` (the stage's starting model) is passed
    to evaluators that take it (preference accuracy compares against it)."""
    import inspect

    results = {}
    for name, options in evaluator_specs(list(evaluators), "evaluators"):
        evaluate = evaluator_factory(registry, name, options)(**options)
        kwargs = ({"reference": reference}
                  if "reference" in inspect.signature(evaluate).parameters else {})
        shown = f" {options}" if options else ""
        print(f"Evaluating {model_path} with {name}{shown} ...")
        results[name] = {k: float(v) for k, v in evaluate(str(model_path), **kwargs).items()}
    return results


def train_variant(name: str, out: str | Path, stage: str | None = None,
                  max_steps: int | None = None, config: str | None = None,
                  sets: Sequence[str] = (), resume: bool = False,
                  registry: Registry | None = None) -> list[StageResult]:
    """Run the stages of variant ``name`` (or only ``stage``) with outputs under ``out``."""
    registry = registry or Registry()
    variant = resolve_variant(registry, name, config, sets, max_steps)
    out = Path(out)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise MoxinError(f"--out {str(out)!r}: {str(existing)!r} is a file; --out must be a "
                         "folder (new or a run's).")
    selected = [variant.stage(stage)] if stage else variant.stages
    # one process writes a run folder: the launcher's other ranks run under rank 0's lock
    lock = RunLock(out).acquire() if distributed.is_rank_zero() else None
    try:
        results = []
        for current in selected:
            init = stage_start(registry, variant, current, out)
            references = preset_references(registry, variant, current, init, out)
            processor_source = stage_processor(registry, variant, current, init, out, references)
            results.append(run_stage(variant.name, current, out / current.name, init,
                                     processor_source, registry, resume, references,
                                     variant=variant))
        return results
    finally:
        if lock is not None:
            lock.release()


def variant_record(variant: Variant) -> dict[str, Any]:
    """The variant as run (every override applied), in the YAML variant-file layout, so
    ``moxin reproduce`` can run it again with ``moxin train``'s own code."""
    stages = []
    for stage in variant.stages:
        summary = stage.summary()
        summary["hyper_parameters"].pop("global_batch")
        summary["tokenizer"] = stage.tokenizer
        stages.append(summary)
    return {"name": variant.name, "description": variant.description,
            "tokenizer": variant.tokenizer, "stages": stages}


def _resolved_config(variant_name: str, stage: Stage, init: str,
                     processor_source: Path | str,
                     references: dict[str, str] | None = None) -> dict:
    resolved = {"variant": variant_name, "init": init, "tokenizer": str(processor_source)}
    if references:  # a composite preset: the models it is built from
        resolved["references"] = dict(references)
    return {**resolved, "stage": stage_to_dict(stage)}


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


def _skipped(stage: Stage, stage_dir: Path, previous: dict) -> StageResult:
    log.info("stage %s already complete in %s; skipping", stage.name, stage_dir)
    return StageResult(stage.name, stage_dir, previous["steps"], previous["first_loss"],
                       previous["last_loss"], previous["tokens_per_second"], previous["tokens"],
                       previous["train_seconds"], skipped=True, evals=previous.get("eval", {}),
                       data_stats=previous.get("data", {}).get("stats"),
                       token_loss=tuple(previous["token_loss"]) if previous.get("token_loss")
                       else None, world_size=previous.get("world_size", 1),
                       start_evals=previous.get("eval_start", {}))


def run_stage(variant_name: str, stage: Stage, stage_dir: Path, init: str,
              processor_source: Path | str, registry: Registry,
              resume: bool = False, references: dict[str, str] | None = None,
              variant: Variant | None = None) -> StageResult:
    """Train one stage; write config, checkpoints, metrics, plot, model export and manifest.
    ``references``: the resolved models a composite preset ``init`` is built from; ``variant``:
    the variant as run (recorded in the manifest for ``moxin reproduce``)."""
    hp = stage.hparams
    resolved = _resolved_config(variant_name, stage, init, processor_source, references)
    writer = distributed.is_rank_zero()
    # ranks other than 0 start after rank 0 wrote the folder (or beside it): only rank 0 checks
    previous = _check_resumable(stage_dir, resolved, resume) if writer else None
    if not writer and (stage_dir / "manifest.json").exists():
        previous = yaml.safe_load((stage_dir / "manifest.json").read_text())
    if previous and previous.get("status") == "complete":
        return _skipped(stage, stage_dir, previous)

    if stage.evaluate_start and hp.strategy in SHARDED:
        raise MoxinError(f"Stage {stage.name!r}: evaluate_start scores the starting model on one "
                         f"process, which a sharded strategy ({hp.strategy}) never holds whole; "
                         "evaluate the starting model with `moxin eval` instead, or turn "
                         "evaluate_start off.")
    _quiet_libraries()
    objective = build_objective(registry, stage.objective, stage.objective_options)
    ref = resolve_model(registry, init)
    family = ref.family
    model_config = ref.config()
    if ref.is_preset and references:
        model_config = family.bind_references(model_config, references)
    processor = family.fit_processor(family.load_processor(processor_source), model_config)
    datamodule = build_datamodule(registry, stage.data, objective, processor, hp.seq_len,
                                  hp.micro_batch_size, hp.seed, hp.data_sharding, hp.data_workers)
    datamodule.check_data()  # bad data fails here, before a model is built

    pl.seed_everything(hp.seed, verbose=False)
    strategy = build_strategy(hp.strategy)
    module = build_module(registry, init, objective, processor, hp,
                          lazy=hp.strategy in SHARDED, stage_dir=stage_dir,
                          references=references)
    config = module.recipe.config

    started: dict[str, Any] = {}
    if writer:
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        write_stage_model(stage_dir, family, config)
        family.save_processor(processor, stage_dir / "tokenizer", processor_source)
        started = _start_manifest(stage_dir, variant_name, stage, init, processor_source,
                                  references, registry, datamodule, variant, previous)
        write_json_atomic(stage_dir / "manifest.json", started)
    try:
        return _train_stage(variant_name, stage, stage_dir, init, processor_source, registry,
                            resume, objective, datamodule, module, family, processor, config,
                            writer, started, hp, strategy)
    except BaseException as error:
        if writer:
            _record_stop(stage_dir, started, error)
        if isinstance(error, (NonFiniteError, CheckpointWriteError)):
            last = latest_checkpoint(stage_dir / "checkpoints")
            where = (f"The last good checkpoint is {last}; continue from it with the same "
                     "command and --resume." if last else "No checkpoint was written yet.")
            raise MoxinError(f"Stage {stage.name!r}: {error} {where}") from None
        raise


def _train_stage(variant_name: str, stage: Stage, stage_dir: Path, init: str,
                 processor_source: Path | str, registry: Registry, resume: bool, objective: Any,
                 datamodule: Any, module: Any, family: Any, processor: Any, config: Any,
                 writer: bool, started: dict[str, Any], hp: Any, strategy: Any) -> StageResult:
    start_evals = _evaluate_start(registry, stage, stage_dir, family, module.model, processor,
                                  processor_source, init) if writer else {}
    distributed.barrier()

    checkpoint_dir = stage_dir / "checkpoints"
    throughput, history = TokenThroughput(), MetricsHistory()
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=checkpoint_dir, filename="step={step:06d}",
                        auto_insert_metric_name=False, every_n_train_steps=hp.checkpoint_every,
                        save_top_k=hp.keep_checkpoints, monitor="step", mode="max",
                        enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
        throughput,
        history,  # after throughput: it records the tok/s just logged
        StepProgressBar(),  # after throughput too: it shows that tok/s
        RNGState(),
        CheckpointOnTerminate(checkpoint_dir),  # after history: the saved state has this step's row
    ]
    for extra in registry.pm.hook.moxin_callbacks(stage=stage, out_dir=stage_dir):
        callbacks.extend(extra or [])
    trainer = pl.Trainer(
        max_steps=hp.max_steps, accumulate_grad_batches=hp.grad_accum,
        gradient_clip_val=hp.grad_clip or None, precision=hp.precision,
        accelerator=hp.accelerator, devices=hp.devices, num_nodes=hp.num_nodes,
        strategy=strategy, plugins=[FolderCheckpointIO()], callbacks=callbacks,
        logger=[CSVLogger(stage_dir, name="logs", version=""),
                TensorBoardLogger(stage_dir, name="tensorboard", version="")],
        log_every_n_steps=hp.log_every, default_root_dir=stage_dir, limit_val_batches=0,
        num_sanity_val_steps=0, enable_model_summary=False, use_distributed_sampler=False,
    )
    ckpt_path = latest_checkpoint(checkpoint_dir) if resume else None
    if ckpt_path is not None and writer:
        print(f"Resuming stage {stage.name!r} from {ckpt_path}")
    clock = time.perf_counter()
    _fit(trainer, module, datamodule, ckpt_path, stage, checkpoint_dir, hp.max_steps)
    wall = time.perf_counter() - clock

    # collective from here on: every rank takes part, rank 0 writes
    world = trainer.world_size
    tokens = int(distributed.all_reduce_sum(torch.tensor(module.tokens_seen)).item())
    # tokens/s of all ranks: each rank's tokens over its own time, summed
    rates = distributed.all_reduce_sum(torch.tensor(throughput.mean_tokens_per_second))
    stats = datamodule.stats()
    trained = _trained_model(trainer, module, config)
    if writer:
        if module.lora is not None:  # the adapters, and the model with them merged
            save_adapter(module.model, stage_dir / "adapter", init)
            trained = merged_model(module.model, module.lora, module.recipe and module.recipe.build)
        save_atomically(family, trained, processor, stage_dir / "hf", processor_source)
    distributed.barrier()
    evals: dict[str, dict[str, float]] = {}
    if writer:
        evals = run_evaluators(registry, stage.evaluators, stage_dir / "hf", init)
    distributed.barrier()

    rows = history.rows
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    token_key = f"train/{objective.token_loss_metric}" if objective.token_loss_metric else None
    token_losses = [r[token_key] for r in rows if token_key in r] if token_key else []
    result = StageResult(stage.name, stage_dir, trainer.global_step,
                         losses[0] if losses else None, losses[-1] if losses else None,
                         float(rates.item()), tokens, wall, evals=evals, data_stats=stats,
                         token_loss=(token_losses[0], token_losses[-1]) if token_losses else None,
                         world_size=world, start_evals=start_evals)
    if writer:
        write_metrics_csv(rows, stage_dir / "metrics.csv")
        plot_loss(rows, stage_dir / "loss.png", f"{variant_name} / {stage.name}",
                  token_key if token_losses else "train/loss")
        if evals:
            write_json_atomic(stage_dir / "eval.json", evals)
        write_json_atomic(stage_dir / "manifest.json", {**started, **_manifest(
            result, variant_name, stage, init, registry, datamodule, stats, wall),
            "skipped_steps": module.skipped_steps,
            "checkpoints": checkpoint_hashes(checkpoint_dir), "finished_at": now()})
        write_openness_report(stage_dir / "hf", stage_dir)
    distributed.barrier()
    return result


def _start_manifest(stage_dir: Path, variant_name: str, stage: Stage, init: str,
                    processor_source: Path | str, references: dict[str, str] | None,
                    registry: Registry, datamodule: Any, variant: Variant | None,
                    previous: dict | None) -> dict[str, Any]:
    """What a stage records when it starts (``status: running``): enough to run it again."""
    resumed = (previous or {}).get("resumed_at", []) + ([now()] if previous else [])
    return {
        "status": "running",
        "variant": variant_name,
        "stage": stage.name,
        "started_at": (previous or {}).get("started_at", now()),
        "resumed_at": resumed,
        "command": command_line(),
        "cwd": str(Path.cwd()),
        "out": str(stage_dir.parent.resolve()),
        "seed": stage.hparams.seed,
        "init": init,
        "tokenizer": str(processor_source),
        "references": dict(references or {}),
        "variant_record": variant_record(variant) if variant is not None else None,
        "versions": package_versions(),
        "plugins": [{"name": i.name, "distribution": i.distribution, "version": i.version,
                     "error": i.error} for i in registry.pm.infos.values()],
        "git": git_commit(),  # the project the run was started from
        "code_git": git_commit(Path(__file__).parent),  # moxin's own source, when a checkout
        "hardware": hardware(),
        "data": {"fingerprint": datamodule.mixture.fingerprint(),
                 "sources": [s.source.describe() for s in datamodule.mixture.sources]},
        "hparams": dataclasses.asdict(stage.hparams),
    }


def _record_stop(stage_dir: Path, started: dict[str, Any], error: BaseException) -> None:
    """Rewrite the manifest of a stage that stopped early: why, and the checkpoints it left."""
    interrupted = isinstance(error, (KeyboardInterrupt, SIGTERMException)) or (
        isinstance(error, MoxinError) and ("interrupted" in str(error)
                                           or "terminated" in str(error)
                                           or "stopped at step" in str(error)))
    last = latest_checkpoint(stage_dir / "checkpoints")
    try:
        write_json_atomic(stage_dir / "manifest.json", {
            **started, "status": "interrupted" if interrupted else "failed",
            "reason": f"{type(error).__name__}: {error}".strip(),
            "stopped_at": now(), "last_checkpoint": str(last) if last else None,
            "checkpoints": checkpoint_hashes(stage_dir / "checkpoints")})
    except OSError:
        pass  # the disk that failed the run may fail this too; the error itself is reported


def _evaluate_start(registry: Registry, stage: Stage, stage_dir: Path, family: Any,
                    model: torch.nn.Module, processor: Any, processor_source: Path | str,
                    init: str) -> dict[str, dict[str, float]]:
    """The stage's evaluators on the model it starts from, saved through its family into
    ``start-model/`` (removed afterwards) and scored there; kept in ``eval_start.json``, which a
    resumed run reads instead of scoring again. Random state is left as it was, so training is
    the same with or without this."""
    if not (stage.evaluate_start and stage.evaluators):
        return {}
    stored = stage_dir / "eval_start.json"
    if stored.exists():
        return json.loads(stored.read_text())
    folder = stage_dir / "start-model"
    with kept_random_state():
        save_atomically(family, model, processor, folder, processor_source)
        scores = run_evaluators(registry, stage.evaluators, folder, init)
    shutil.rmtree(folder, ignore_errors=True)
    write_json_atomic(stored, scores)
    return scores


def _fit(trainer: pl.Trainer, module: Any, datamodule: Any, ckpt_path: Path | None,
         stage: Stage, checkpoint_dir: Path, max_steps: int) -> None:
    """``trainer.fit`` with clear messages for interruptions, and the final checkpoint."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
        # frozen helper models (a DPO reference) are in eval mode on purpose
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()  # the manifest's peak is this stage's
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
    final = checkpoint_dir / f"step={trainer.global_step:06d}.ckpt"
    if not final.exists():
        # a graceful stop (SIGTERM from a scheduler, a callback) ends between steps: safe to save
        trainer.save_checkpoint(final, weights_only=False)
    if trainer.global_step < max_steps:
        raise MoxinError(f"Stage {stage.name!r} stopped at step {trainer.global_step} of "
                         f"{max_steps} (a termination signal or a callback asked it to stop). "
                         f"Checkpoint saved to {final}; continue with the same command and --resume.")


def _trained_model(trainer: pl.Trainer, module: Any, config: Any) -> torch.nn.Module | None:
    """The trained model as an ordinary module on rank 0 (None elsewhere): a sharded model's
    full weights are gathered first (collective)."""
    if not is_sharded(trainer.strategy):
        return module.model
    state = trainer.strategy.lightning_module_state_dict()  # full on rank 0, empty elsewhere
    if not trainer.is_global_zero:
        return None
    return model_from_state(module.family, config, state)


def _manifest(result: StageResult, variant_name: str, stage: Stage, init: str,
              registry: Registry, datamodule: Any, stats: dict | None,
              wall: float) -> dict[str, Any]:
    stage_dir = result.out_dir
    processor_file = stage_dir / "tokenizer" / "tokenizer.model"
    packed = stats and {"tokens_in", "tokens_out"} <= set(stats) and stats["tokens_in"]
    return {
        "status": "complete",
        "variant": variant_name,
        "stage": stage.name,
        "command": command_line(),
        "seed": stage.hparams.seed,
        "init": init,
        "steps": result.steps,
        "world_size": result.world_size,
        "tokens": result.tokens,
        "train_seconds": round(wall, 3),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "tokens_per_second_note": f"all {result.world_size} rank(s), after 2 warm-up batches",
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "token_loss": list(result.token_loss) if result.token_loss else None,
        "versions": package_versions(),
        "plugins": [{"name": i.name, "distribution": i.distribution, "version": i.version,
                     "error": i.error} for i in registry.pm.infos.values()],
        "data": {"fingerprint": datamodule.mixture.fingerprint(),
                 "sources": [s.source.describe() for s in datamodule.mixture.sources],
                 "sharding": datamodule.sharding,
                 "packing_efficiency": (stats["tokens_out"] / stats["tokens_in"]) if packed
                 else None,
                 "stats": stats},
        "eval": result.evals,
        "eval_start": result.start_evals,
        "tokenizer_sha256": sha256_file(processor_file) if processor_file.exists() else None,
        "checkpoint_sha256": sha256_file(stage_dir / "hf" / "model.safetensors")
        if (stage_dir / "hf" / "model.safetensors").exists() else None,
        "hparams": dataclasses.asdict(stage.hparams),
        # rank 0's process: GPU peaks since this stage's fit started (training, export and
        # evaluators); the host RSS is the process's peak so far, earlier stages included
        "peak_memory": peak_memory(),
    }
