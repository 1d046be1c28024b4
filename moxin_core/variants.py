"""Variants: named, ordered recipes of stages. Data, not code paths.

A stage names its objective, its data sources with weights, the model it starts from (a preset, an
HF folder or hub id, ``"previous"`` for the previous stage's result, or ``"variant:NAME"`` for the
final model of variant ``NAME`` trained into the same run folder) and its hyper-parameters.
``moxin train VARIANT`` resolves every name through the plugin registry and runs the stages in
order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from moxin_core.errors import MoxinError

PREVIOUS = "previous"
#: attention kernels a stage's ``attention`` may name (``auto`` picks one by device)
ATTENTION_KERNELS = ("auto", "sdpa", "flex_attention", "flash_attention_2", "eager")
#: every key ``lora`` may set, with its default (``r`` 0: LoRA off)
LORA_DEFAULTS: dict[str, Any] = {
    "r": 0,  # adapter rank; 0 trains every weight as usual
    "alpha": None,  # scale numerator (the update is alpha / r * B A); None: 2 * r
    "dropout": 0.0,  # dropout on the adapters' input
    # peft's "all-linear": every linear layer but the output head; or a list of module names
    "targets": "all-linear",
    "quantize": None,  # None, or nf4 / fp4: frozen base weights in 4 bits (QLoRA)
}
QUANTIZE = ("nf4", "fp4")


def lora_problems(settings: Any) -> list[str]:
    """What is wrong with a stage's ``lora`` mapping (empty: nothing)."""
    if not isinstance(settings, dict):
        return [f"lora must be a mapping such as {{r: 16}}, got {settings!r}"]
    problems = []
    unknown = sorted(set(settings) - set(LORA_DEFAULTS))
    if unknown:
        problems.append(f"lora has no setting {', '.join(map(str, unknown))} (known: "
                        f"{', '.join(LORA_DEFAULTS)})")
    r = settings.get("r", 0)
    if not isinstance(r, int) or isinstance(r, bool) or r < 0:
        problems.append(f"lora.r must be an integer >= 0 (0: no LoRA), got {r!r}")
    alpha = settings.get("alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or alpha <= 0):
        problems.append(f"lora.alpha must be a positive number, got {alpha!r}")
    dropout = settings.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        problems.append(f"lora.dropout must be in [0, 1), got {dropout!r}")
    targets = settings.get("targets", "all-linear")
    if not (targets == "all-linear" or (isinstance(targets, list) and targets
                                        and all(isinstance(t, str) for t in targets))):
        problems.append(f"lora.targets must be all-linear or a list of module names such as "
                        f"[q_proj, v_proj], got {targets!r}")
    quantize = settings.get("quantize")
    if quantize is not None and quantize not in QUANTIZE:
        problems.append(f"lora.quantize must be nf4, fp4 or null, got {quantize!r}")
    return problems


#: ``model: "variant:moxin-tiny-base"`` starts from that variant's final stage in the same ``--out``.
VARIANT_PREFIX = "variant:"


@dataclass
class DataSpec:
    """One data source of a stage: registry name, mixture weight and factory options."""

    source: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class HyperParameters:
    """Training hyper-parameters of one stage (the fields ``--set`` and ``--config`` can change)."""

    max_steps: int = 100
    micro_batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 256
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    precision: str = "bf16-mixed"  # 32-true | bf16-mixed | 16-mixed | bf16-true
    seed: int = 0
    #: log the loss and metrics (metrics.csv and the progress bar at the first step, every
    #: log_every-th and the last; TensorBoard and logs/ at every log_every-th): only those steps
    #: wait for the device (to read numbers)
    log_every: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp (FSDP2, moxin_core.strategies) | deepspeed ...
    #: examples: every rank builds the same example stream and keeps its own micro-batches (the
    #: global batch does not depend on the world size); records: each rank reads and tokenises
    #: only its part of every source (moxin_core.data.stream)
    data_sharding: str = "examples"
    data_workers: int = 0  # data-loader worker processes per rank (0: in the training process)
    #: a non-finite loss or gradient: ``stop`` the run (naming the last good checkpoint) or
    #: ``skip`` that optimizer step (weights and optimizer state untouched; counted in the
    #: manifest's ``skipped_steps`` and logged as ``train/skipped_steps``)
    nonfinite: str = "stop"
    #: recompute each decoder layer's activations in the backward pass instead of keeping them
    #: (transformers' gradient checkpointing): less memory for about one more forward pass
    activation_checkpointing: bool = False
    #: the attention kernel: auto (flex attention with a document block mask on CUDA, SDPA
    #: elsewhere), sdpa, flex_attention, flash_attention_2 (needs flash-attn) or eager
    attention: str = "auto"
    #: torch.compile the model being trained (nn.Module.compile: state-dict keys unchanged); the
    #: first steps compile, and tokens/s leaves its 2 warm-up steps out
    compile: bool = False
    #: LoRA / QLoRA through peft (moxin_core.lora): {r: 16} trains low-rank adapters on every
    #: linear layer with the rest frozen; also alpha (default 2r), dropout, targets, quantize
    #: (nf4: QLoRA). {} or r 0: every weight trains. Adapters go to adapter/, merged weights to hf/
    lora: dict = field(default_factory=dict)

    def validate(self, where: str) -> None:
        """Reject absurd values before any work starts; ``where`` names the stage."""
        problems = []
        positive = ("max_steps", "micro_batch_size", "grad_accum", "seq_len", "log_every",
                    "checkpoint_every", "keep_checkpoints", "num_nodes")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seq_len, int) and self.seq_len == 1:
            problems.append("seq_len must be at least 2 (a token and the next one it predicts), "
                            "got 1")
        if not _valid_devices(self.devices):
            problems.append("devices must be a positive number of devices, -1 or 'auto' (all "
                            f"of them) or a list of device indices, got {self.devices!r}")
        for name in ("accelerator", "strategy"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                problems.append(f"{name} must be a name such as 'auto', got "
                                f"{getattr(self, name)!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            problems.append(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.grad_clip < 0:
            problems.append(f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip!r}")
        if self.data_sharding not in ("examples", "records"):
            problems.append(f"data_sharding must be examples or records, got {self.data_sharding!r}")
        if not isinstance(self.data_workers, int) or self.data_workers < 0:
            problems.append(f"data_workers must be an integer >= 0, got {self.data_workers!r}")
        if self.attention not in ATTENTION_KERNELS:
            problems.append(f"attention must be {', '.join(ATTENTION_KERNELS[:-1])} or "
                            f"{ATTENTION_KERNELS[-1]}, got {self.attention!r}")
        if not isinstance(self.compile, bool):
            problems.append(f"compile must be true or false, got {self.compile!r}")
        if not isinstance(self.activation_checkpointing, bool):
            problems.append("activation_checkpointing must be true or false, got "
                            f"{self.activation_checkpointing!r}")
        problems.extend(lora_problems(self.lora))
        if self.nonfinite not in ("stop", "skip"):
            problems.append(f"nonfinite must be stop or skip, got {self.nonfinite!r}")
        if self.precision not in ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"):
            problems.append(f"precision must be 32-true, bf16-mixed, 16-mixed or bf16-true, "
                            f"got {self.precision!r}")
        if problems:
            raise MoxinError(f"Invalid hyper-parameters in {where}: " + "; ".join(problems) + ".")

    @property
    def total_warmup_steps(self) -> int:
        return self.warmup_steps or int(round(self.warmup_ratio * self.max_steps))


def _valid_devices(devices: Any) -> bool:
    """What Lightning takes as ``devices``: a count, -1 or "auto" (all), or device indices (a
    list, or a string such as "0,1")."""
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices > 0 or devices == -1
    if isinstance(devices, str):
        text = devices.strip()
        return text in ("auto", "-1") or (bool(text) and all(
            part.strip().isdigit() for part in text.rstrip(",").split(",")) and text != "0")
    if isinstance(devices, (list, tuple)):
        return bool(devices) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                     for d in devices)
    return False


@dataclass
class Stage:
    """One training stage of a variant."""

    name: str
    objective: str
    data: list[DataSpec]
    model: str = PREVIOUS
    tokenizer: str | None = None  # folder or hub id; None: the run's tokenizer / the model's
    objective_options: dict[str, Any] = field(default_factory=dict)
    hparams: HyperParameters = field(default_factory=HyperParameters)
    description: str = ""
    #: evaluators run on the stage's exported model when it finishes: registry names, or
    #: ``{"name": NAME, OPTION: VALUE, ...}`` to pass options to the evaluator's factory
    evaluators: list[str | dict[str, Any]] = field(default_factory=list)
    #: also score the model the stage starts from with the same evaluators, before training
    #: (stored as ``eval_start.json``), so a stage reports its own before/after
    evaluate_start: bool = False
    #: for a stage whose ``model`` is a preset built from other models (a VLM's language model):
    #: ``{role: model}`` replacing the preset's own choice (a folder, hub id, preset, ``previous``
    #: or ``variant:NAME``)
    references: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The key facts ``moxin variants`` shows."""
        hp = self.hparams
        return {
            "name": self.name,
            "objective": self.objective,
            "objective_options": dict(self.objective_options),
            "data_sources": [{"source": d.source, "weight": d.weight, **d.options} for d in self.data],
            "model": self.model,
            # every field (a YAML variant written from `moxin variants --json` is complete), and
            # the global batch per optimizer step over every device (devices="auto": one)
            "hyper_parameters": {
                **dataclasses.asdict(hp),
                "global_batch": hp.micro_batch_size * hp.grad_accum * hp.num_nodes
                * (hp.devices if isinstance(hp.devices, int) else 1),
            },
            "description": self.description,
            "evaluators": [e if isinstance(e, str) else dict(e) for e in self.evaluators],
            "evaluate_start": self.evaluate_start,
            "references": dict(self.references),
        }


@dataclass
class Variant:
    """A named, ordered list of stages."""

    name: str
    stages: list[Stage]
    description: str = ""
    tokenizer: str | None = None  # default tokenizer for stages that name none

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise MoxinError(f"Variant {self.name!r} has no stage {name!r}; its stages are: "
                         f"{', '.join(s.name for s in self.stages)}.")


# ---------------------------------------------------------------------------------------------
# Overrides: --set key=value and --config FILE.yaml
# ---------------------------------------------------------------------------------------------

_HPARAM_FIELDS = {f.name: f for f in dataclasses.fields(HyperParameters)}


def parse_value(key: str, raw: str, where: str) -> Any:
    """A setting's text as YAML data (``yaml.safe_load``: never evaluated, and tags that would
    build Python objects are refused)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise MoxinError(f"{where}: setting {key!r}: {raw!r} is not a plain YAML value "
                         f"({str(error).splitlines()[0]}); give a number, a word, a list "
                         "[a, b] or a mapping {k: v}. Values are data, never code.") from None


def _coerce(key: str, raw: Any, current: Any, where: str = "--set") -> Any:
    """Parse a ``--set`` string as YAML, reading numbers such as ``3e-4`` as numbers; ``where``
    (``--set``, a file) names the origin in errors."""
    if not isinstance(raw, str):
        value = raw
    else:
        value = parse_value(key, raw, where) if raw != "" else ""
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
    if isinstance(current, bool) or current is None:
        return value
    if isinstance(current, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(current, float):
            return float(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
    if isinstance(current, (int, float)) and not isinstance(value, (int, float)):
        raise MoxinError(f"{where}: setting {key!r} expects a number, got {raw!r}; give a "
                         f"number (it is {current!r} now).")
    return value


def apply_overrides(variant: Variant, overrides: dict[str, Any], where: str) -> None:
    """Apply ``{key: value}`` to the variant's stages in place.

    ``key`` is a hyper-parameter name (every stage), ``STAGE.key`` (one stage), or for stage fields
    ``model``/``tokenizer``/``objective_options.X``. Unknown keys are errors listing valid ones.
    """
    stage_names = [s.name for s in variant.stages]
    # a new objective first: its options (set in the same call) then apply to it
    ordered = sorted(overrides.items(), key=lambda item: item[0].rpartition(".")[2] != "objective")
    for key, raw in ordered:
        targets = variant.stages
        name = key
        head, _, tail = key.partition(".")
        if tail and head in stage_names:
            targets, name = [variant.stage(head)], tail
        for stage in targets:
            if name == "devices":  # a count, "auto" or a list: no one type to keep
                stage.hparams.devices = _coerce(key, raw, None, where)
            elif name == "lora" or name.startswith("lora."):
                _set_lora(stage.hparams, key, name, raw, where)
            elif name in _HPARAM_FIELDS:
                current = getattr(stage.hparams, name)
                setattr(stage.hparams, name, _coerce(key, raw, current, where))
            elif name in ("model", "tokenizer"):
                setattr(stage, name, raw)
            elif name == "objective":
                if not isinstance(raw, str) or not raw.strip():
                    raise MoxinError(f"{where}: {key} must be an objective name, got {raw!r}.")
                if raw != stage.objective:  # the old objective's options are not the new one's
                    stage.objective, stage.objective_options = raw.strip(), {}
            elif name == "evaluators":
                value = parse_value(key, raw, where) if isinstance(raw, str) else raw
                if not isinstance(value, list):
                    raise MoxinError(f"{where}: {key} must be a list of evaluator names or "
                                     f"{{name: NAME, OPTION: VALUE}} entries, got {raw!r}.")
                evaluator_specs(value, f"{where}: {key}")
                stage.evaluators = value
            elif name == "evaluate_start":
                value = _coerce(name, raw, None)
                if not isinstance(value, bool):
                    raise MoxinError(f"{where}: {key} must be true or false, got {raw!r}.")
                stage.evaluate_start = value
            elif name == "data":
                stage.data = _data_specs(raw, f"{where}: {key}")
            elif name.startswith("references.") and name.count(".") == 1:
                stage.references[name.split(".", 1)[1]] = str(raw)
            elif name.startswith("objective_options."):
                stage.objective_options[name.split(".", 1)[1]] = _coerce(name, raw, None)
            elif name == "global_batch":
                raise MoxinError(
                    f"{where}: {key} cannot be set; the global batch is derived as "
                    "micro_batch_size x grad_accum x devices x num_nodes. Set those instead "
                    f"(e.g. {key.replace('global_batch', 'grad_accum')}=4).")
            else:
                raise MoxinError(
                    f"Unknown setting {key!r} in {where}. Settable: {', '.join(_HPARAM_FIELDS)}, "
                    "objective, model, tokenizer, data, evaluators, evaluate_start, "
                    "references.ROLE, objective_options.NAME; prefix with a stage name "
                    f"({', '.join(stage_names)}) to change one stage only.")


def _set_lora(hp: HyperParameters, key: str, name: str, raw: Any, where: str) -> None:
    """``lora={r: 16, ...}`` replaces the mapping; ``lora.r=16`` sets one entry."""
    if name == "lora":
        value = parse_value(key, raw, where) if isinstance(raw, str) else raw
        if value in (None, ""):
            value = {}
        if not isinstance(value, dict):
            raise MoxinError(f"{where}: {key} must be a mapping such as {{r: 16, alpha: 32}}, "
                             f"got {raw!r}; or set one entry with lora.r=16.")
        hp.lora = dict(value)
        return
    hp.lora = {**hp.lora, name.split(".", 1)[1]: _coerce(key, raw, None, where)}


def evaluator_specs(entries: list, where: str) -> list[tuple[str, dict[str, Any]]]:
    """``(name, options)`` of each evaluator entry: a registry name, or ``{name: NAME, OPTION:
    VALUE, ...}``. An evaluator listed twice would overwrite its own scores: an error."""
    specs = []
    for entry in entries:
        if isinstance(entry, str):
            specs.append((entry, {}))
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            specs.append((entry["name"], {k: v for k, v in entry.items() if k != "name"}))
        else:
            raise MoxinError(f"{where}: each evaluator is a name or {{name: NAME, OPTION: VALUE}}, "
                             f"got {entry!r}.")
    names = [name for name, _ in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MoxinError(f"{where}: evaluator {', '.join(twice)} is listed twice; its scores are "
                         "stored under its name, so list it once.")
    return specs


def _data_specs(raw: Any, where: str) -> list[DataSpec]:
    """``[{source: NAME, weight: W, OPTION: VALUE, ...}]`` (a YAML string from ``--set`` too)."""
    items = parse_value("data", raw, where) if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise MoxinError(f"{where}: `data` must be a non-empty list of "
                         "{source: NAME, weight: W, ...options}.")
    specs = []
    for item in items:
        if not isinstance(item, dict) or "source" not in item:
            raise MoxinError(f"{where}: each data entry needs a `source` name, got {item!r}.")
        options = {k: v for k, v in item.items() if k not in ("source", "weight", "options")}
        options.update(item.get("options") or {})
        specs.append(DataSpec(item["source"], float(item.get("weight", 1.0)), options))
    return specs


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parse error on one line: where (line, column) and what (PyYAML's own message
    spans several lines, with a caret under the spot)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    context_mark = getattr(error, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    started = (f" ({context} that starts at line {context_mark.line + 1})"
               if context and context_mark is not None else "")
    return f"{where}{problem}{started}; fix the file's YAML syntax"


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML overrides file: ``{key: value}`` or ``{stages: {STAGE: {key: value}}}``."""
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise MoxinError(f"Config file {path!r} does not exist.") from None
    except yaml.YAMLError as exc:
        raise MoxinError(f"Config file {path!r} is not valid YAML: {yaml_problem(exc)}.") from None
    if not isinstance(data, dict):
        raise MoxinError(f"Config file {path!r} must hold a mapping of settings.")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "stages" and isinstance(value, dict):
            for stage, settings in value.items():
                for sub, subvalue in (settings or {}).items():
                    if sub == "hparams" and isinstance(subvalue, dict):
                        flat.update({f"{stage}.{k}": v for k, v in subvalue.items()})
                    else:
                        flat[f"{stage}.{sub}"] = subvalue
        else:
            flat[key] = value
    return flat


def stage_to_dict(stage: Stage) -> dict[str, Any]:
    return dataclasses.asdict(stage)


# ---------------------------------------------------------------------------------------------
# Variants written as YAML files: `moxin train my-variant.yaml`
# ---------------------------------------------------------------------------------------------

VARIANT_FILE_SUFFIXES = (".yaml", ".yml")
_VARIANT_KEYS = ("name", "description", "tokenizer", "stages")
_STAGE_KEYS = ("name", "objective", "description", "model", "tokenizer", "data", "data_sources",
               "objective_options", "hyper_parameters", "hparams", "evaluators", "evaluate_start",
               "references")


def is_variant_file(name: str) -> bool:
    return name.endswith(VARIANT_FILE_SUFFIXES)


def load_variant_file(path: str) -> Variant:
    """A variant written as YAML, with the keys ``moxin variants --json`` shows::

        name: my-variant            # default: the file's name
        description: ...
        tokenizer: embedded         # the stages' default tokenizer
        stages:
          - name: pretrain
            objective: lm
            model: moxin-tiny       # a preset, folder, hub id, previous (default), variant:NAME
            data: [{source: embedded, weight: 1.0, num_documents: 20000}]   # or data_sources
            objective_options: {}
            hyper_parameters: {max_steps: 100, seq_len: 128, lr: 0.003, ...}  # or hparams
            evaluators: [...]
            evaluate_start: false
            references: {}

    Every key is checked (an unknown one is an error naming the file, the stage and the keys
    known), values go through the same coercion and checks as ``--set``.
    """
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise MoxinError(f"Variant file {path!r} does not exist; `moxin train` takes a variant "
                         "name (`moxin variants` lists them) or a .yaml variant file.")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise MoxinError(f"Variant file {path}: not valid YAML: {yaml_problem(exc)}.") from None
    if not isinstance(data, dict):
        raise MoxinError(f"Variant file {path}: expected a mapping with `stages`, got "
                         f"{type(data).__name__}.")
    unknown = sorted(set(data) - set(_VARIANT_KEYS))
    if unknown:
        raise MoxinError(f"Variant file {path}: unknown key {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(_VARIANT_KEYS)}.")
    entries = data.get("stages")
    if not isinstance(entries, list) or not entries:
        raise MoxinError(f"Variant file {path}: `stages` must be a non-empty list of stages.")
    variant = Variant(name=str(data.get("name") or file.stem), stages=[],
                      description=str(data.get("description") or ""),
                      tokenizer=data.get("tokenizer"))
    overrides: dict[str, Any] = {}
    for index, entry in enumerate(entries):
        where = f"variant file {path}, stage {index + 1}"
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("objective"):
            raise MoxinError(f"{where}: each stage needs at least `name` and `objective`.")
        name = str(entry["name"])
        unknown = sorted(set(entry) - set(_STAGE_KEYS))
        if unknown:
            raise MoxinError(f"{where} ({name!r}): unknown key {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(_STAGE_KEYS)}.")
        if name in [s.name for s in variant.stages]:
            raise MoxinError(f"{where}: a second stage named {name!r}; stage names are unique.")
        data_entries = entry.get("data", entry.get("data_sources"))
        if data_entries is None:
            raise MoxinError(f"{where} ({name!r}): `data` (or `data_sources`) is missing.")
        stage = Stage(name=name, objective=str(entry["objective"]),
                      data=_data_specs(data_entries, f"{where} ({name!r})"),
                      description=str(entry.get("description") or ""))
        variant.stages.append(stage)
        hparams = dict(entry.get("hyper_parameters") or entry.get("hparams") or {})
        batch = hparams.pop("global_batch", None)
        for key, value in hparams.items():
            overrides[f"{name}.{key}"] = value
        for key in ("model", "tokenizer", "evaluators", "evaluate_start"):
            if entry.get(key) is not None:
                overrides[f"{name}.{key}"] = entry[key]
        for group in ("objective_options", "references"):
            options = entry.get(group) or {}
            if not isinstance(options, dict):
                raise MoxinError(f"{where} ({name!r}): `{group}` must be a mapping.")
            for key, value in options.items():
                overrides[f"{name}.{group}.{key}"] = value
        overrides[f"{name}.__global_batch"] = batch
    checks = {k: v for k, v in overrides.items() if k.endswith(".__global_batch")}
    apply_overrides(variant, {k: v for k, v in overrides.items() if k not in checks},
                    f"variant file {path}")
    for key, batch in checks.items():
        stage = variant.stage(key.split(".")[0])
        computed = stage.summary()["hyper_parameters"]["global_batch"]
        if batch is not None and batch != computed:
            raise MoxinError(f"Variant file {path}, stage {stage.name!r}: global_batch {batch} "
                             f"does not match micro_batch_size x grad_accum x devices x "
                             f"num_nodes = {computed}; set those instead (global_batch is "
                             "derived).")
    return variant
