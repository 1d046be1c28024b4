"""Bad input through the real command line: every case exits non-zero with one paragraph
``moxin: error: ...`` that names what is wrong and where (file, line, field, option), never a
traceback, and leaves no output folder that looks complete.

Each case is a function that writes its bad input into a fresh folder and returns the command,
the message fragments that must appear and the output folder to inspect; the table is the
``CASES`` dict, one test id per case. Errors that ``moxin train`` should raise while it resolves
settings or reads the first records come before any model is built or trained.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import (NANO_SETS, assert_clean_error, install_distributions,
                            plugin_distribution, plugin_path_env, run_cli)

STAGE = "pretrain-128"


@dataclass
class BadInput:
    """A command that must fail, the fragments its message must hold, and its output folder."""

    args: list[str]
    fragments: tuple[str, ...]
    out: Path | None = None  # must not look complete afterwards
    env: dict = field(default_factory=dict)


class Shared:
    """Module-scoped inputs a case asks for (built on first use)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request

    @property
    def tokenizer(self) -> Path:
        return self.request.getfixturevalue("nano_tokenizer")

    @property
    def model(self) -> Path:
        return self.request.getfixturevalue("nano_model")

    @property
    def plugins(self) -> Path:
        return self.request.getfixturevalue("bad_plugins")


CASES: dict[str, Callable[[Path, Shared], BadInput]] = {}


def case(name: str) -> Callable:
    def register(function: Callable[[Path, Shared], BadInput]) -> Callable:
        assert name not in CASES, name
        CASES[name] = function
        return function
    return register


def train(out: Path, *sets: str, tokenizer: Path | None = None,
          extra: tuple[str, ...] = ()) -> list[str]:
    """``moxin train moxin-tiny-base --stage pretrain-128 --max-steps 2`` at nano scale, plus
    ``--set`` of each of ``sets`` and ``extra`` arguments."""
    settings = [*NANO_SETS, *([f"tokenizer={tokenizer}"] if tokenizer else []), *sets]
    args = ["train", "moxin-tiny-base", "--out", str(out), "--stage", STAGE, "--max-steps", "2"]
    return args + sum((["--set", s] for s in settings), []) + list(extra)


def files_data(path: Path, **options) -> str:
    """``data=[{source: files, paths: PATH, ...}]`` for ``--set``."""
    entry = {"source": "files", "paths": str(path), **options}
    return "data=" + json.dumps([entry])


def train_on(tmp: Path, shared: Shared, path: Path, *fragments: str, **options) -> BadInput:
    out = tmp / "run"
    return BadInput(train(out, files_data(path, **options), tokenizer=shared.tokenizer),
                    fragments, out)


def write_jsonl(path: Path, *records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ------------------------------------------------------------------------------------- files


@case("missing-data-file")
def _(tmp, shared):
    return train_on(tmp, shared, tmp / "missing.jsonl", "missing.jsonl", "matches no file")


@case("empty-data-file")
def _(tmp, shared):
    (tmp / "empty.jsonl").write_text("")
    return train_on(tmp, shared, tmp / "empty.jsonl", "empty.jsonl", "is empty")


@case("gzip-file-as-jsonl")
def _(tmp, shared):
    (tmp / "data.jsonl").write_bytes(gzip.compress(b'{"text": "a document"}\n' * 50))
    return train_on(tmp, shared, tmp / "data.jsonl", "data.jsonl", "gzip", "gunzip")


@case("binary-file-as-text")
def _(tmp, shared):
    (tmp / "notes.txt").write_bytes(bytes(range(256)) * 8)
    return train_on(tmp, shared, tmp / "notes.txt", "notes.txt:1", "binary")


@case("latin1-jsonl")
def _(tmp, shared):
    (tmp / "data.jsonl").write_bytes('{"text": "plain"}\n{"text": "café crème"}\n'
                                     .encode("latin-1"))
    return train_on(tmp, shared, tmp / "data.jsonl", "data.jsonl:2", "not valid UTF-8", "iconv")


@case("latin1-text")
def _(tmp, shared):
    (tmp / "notes.txt").write_bytes("first\n\nsecond\nun café\n".encode("latin-1"))
    return train_on(tmp, shared, tmp / "notes.txt", "notes.txt:4", "not valid UTF-8", "iconv")


@case("utf16-jsonl")
def _(tmp, shared):
    (tmp / "data.jsonl").write_bytes('{"text": "a document"}\n'.encode("utf-16"))
    return train_on(tmp, shared, tmp / "data.jsonl", "data.jsonl", "UTF-16", "iconv")


@case("truncated-parquet")
def _(tmp, shared):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp / "data.parquet"
    pq.write_table(pa.table({"text": [f"document {i}" for i in range(200)]}), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return train_on(tmp, shared, path, "data.parquet", "Parquet")


@case("jsonl-line-not-an-object")
def _(tmp, shared):
    (tmp / "rows.jsonl").write_text('{"text": "fine"}\n["a", "list"]\n')
    return train_on(tmp, shared, tmp / "rows.jsonl", "rows.jsonl:2", "expected a JSON object")


# ----------------------------------------------------------------------------------- records


@case("missing-text-field")
def _(tmp, shared):
    path = write_jsonl(tmp / "fields.jsonl", {"body": "x", "title": "y"})
    return train_on(tmp, shared, path, "fields.jsonl:1", "no field 'text'", "body, title",
                    "text_field")


@case("text-is-a-number")
def _(tmp, shared):
    path = write_jsonl(tmp / "data.jsonl", {"text": "fine"}, {"text": 42})
    return train_on(tmp, shared, path, "data.jsonl:2", "'text'", "number", "string")


@case("text-is-a-list")
def _(tmp, shared):
    path = write_jsonl(tmp / "data.jsonl", {"text": ["a", "b"]})
    return train_on(tmp, shared, path, "data.jsonl:1", "'text'", "list", "string")


@case("text-is-null")
def _(tmp, shared):
    path = write_jsonl(tmp / "data.jsonl", {"text": "fine"}, {"text": "ok"}, {"text": None})
    return train_on(tmp, shared, path, "data.jsonl:3", "'text'", "null")


@case("empty-text-everywhere")
def _(tmp, shared):
    path = write_jsonl(tmp / "data.jsonl", *({"text": ""} for _ in range(5)), {"text": "  \n"})
    return train_on(tmp, shared, path, "data.jsonl", "empty", "'text'")


@case("huge-single-record")
def _(tmp, shared):
    path = tmp / "huge.jsonl"
    with open(path, "w") as handle:  # one 50 MB line: a corpus dumped without newlines
        handle.write('{"text": "')
        handle.write("word " * (10 * 1024 * 1024))
        handle.write('"}\n')
    return train_on(tmp, shared, path, "huge.jsonl:1", "MB", "max_record_mb")


# ----------------------------------------------------------------------- variant and config files

BASE_STAGE = {"name": "pretrain", "objective": "lm", "model": "moxin-nano",
              "data": [{"source": "embedded", "num_documents": 200}]}


def variant_file(tmp: Path, shared: Shared, fragments: tuple[str, ...], text: str | None = None,
                 **stage) -> BadInput:
    """``moxin train my.yaml`` on a one-stage variant file: ``BASE_STAGE`` changed by ``stage``,
    or ``text`` verbatim."""
    path = tmp / "my.yaml"
    if text is None:
        import yaml

        data = {"name": "mine", "tokenizer": str(shared.tokenizer),
                "stages": [{**BASE_STAGE, **stage}]}
        text = yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)
    out = tmp / "run"
    return BadInput(["train", str(path), "--out", str(out), "--max-steps", "2"], fragments, out)


@case("variant-file-unknown-key")
def _(tmp, shared):
    return variant_file(tmp, shared, ("my.yaml", "stage 1 ('pretrain')", "unknown key 'lr_max'"),
                        lr_max=3)


@case("variant-file-unknown-hyper-parameter")
def _(tmp, shared):
    return variant_file(tmp, shared, ("my.yaml", "'pretrain.learning_rate'", "Settable"),
                        hyper_parameters={"learning_rate": 1e-3})


@case("variant-file-wrong-type")
def _(tmp, shared):
    return variant_file(tmp, shared, ("my.yaml", "'pretrain.max_steps'", "expects a number",
                                      "'many'"), hyper_parameters={"max_steps": "many"})


@case("variant-file-negative-lr")
def _(tmp, shared):
    return variant_file(tmp, shared, ("my.yaml", "stage 'pretrain'",
                                      "lr must be a positive number, got -0.1"),
                        hyper_parameters={"lr": -0.1})


@case("variant-file-global-batch-mismatch")
def _(tmp, shared):
    return variant_file(tmp, shared, ("my.yaml", "stage 'pretrain'",
                                      "global_batch 16 does not match", "= 4"),
                        hyper_parameters={"micro_batch_size": 4, "global_batch": 16})


@case("variant-file-malformed-yaml")
def _(tmp, shared):
    text = "name: mine\nstages:\n  - name: pretrain\n    objective: [lm\n    model: moxin-nano\n"
    return variant_file(tmp, shared, ("my.yaml", "not valid YAML", "line 5, column 10"), text)


@case("variant-file-unknown-objective")
def _(tmp, shared):
    return variant_file(tmp, shared, ("my.yaml", "stage 'pretrain'", "Unknown objective 'lmm'"),
                        objective="lmm")


@case("config-file-malformed-yaml")
def _(tmp, shared):
    (tmp / "c.yaml").write_text("lr: 1e-3\nseq_len: [64\n")
    out = tmp / "run"
    return BadInput(train(out, tokenizer=shared.tokenizer, extra=("--config", str(tmp / "c.yaml"))),
                    ("c.yaml", "not valid YAML", "line 3, column 1"), out)


@case("config-file-unknown-key")
def _(tmp, shared):
    (tmp / "c.yaml").write_text("learning_rate: 0.001\n")
    out = tmp / "run"
    return BadInput(train(out, tokenizer=shared.tokenizer, extra=("--config", str(tmp / "c.yaml"))),
                    ("c.yaml", "Unknown setting 'learning_rate'"), out)


# ------------------------------------------------------------------------------------ --set


def bad_set(tmp: Path, shared: Shared, settings: tuple[str, ...], *fragments: str) -> BadInput:
    out = tmp / "run"
    return BadInput(train(out, *settings, tokenizer=shared.tokenizer), fragments, out)


IN_STAGE = "stage 'pretrain-128' of variant 'moxin-tiny-base'"

#: case -> (--set settings, fragments of the message)
SET_CASES = {
    "set-unknown-key": (("warmup=3",), ("--set", "Unknown setting 'warmup'", "warmup_steps")),
    "set-wrong-type": (("lr=fast",), ("--set", "'lr'", "expects a number, got 'fast'")),
    "set-negative-lr": (("lr=-1e-3",), (IN_STAGE, "lr must be a positive number, got -0.001")),
    "set-zero-micro-batch-size": (("micro_batch_size=0",), (
        IN_STAGE, "micro_batch_size must be a positive integer, got 0")),
    "set-negative-seq-len": (("seq_len=-8",), (IN_STAGE,
                                               "seq_len must be a positive integer, got -8")),
    "set-seq-len-one": (("seq_len=1",), (IN_STAGE, "seq_len must be at least 2", "got 1")),
    "set-zero-grad-accum": (("grad_accum=0",), (IN_STAGE,
                                                "grad_accum must be a positive integer, got 0")),
    "set-zero-keep-checkpoints": (("keep_checkpoints=0",), (
        IN_STAGE, "keep_checkpoints must be a positive integer, got 0")),
    "set-global-batch": (("global_batch=64",), ("--set", "global_batch", "cannot be set",
                                               "micro_batch_size x grad_accum")),
    "set-devices-zero": (("devices=0",), (IN_STAGE, "devices must be", "got 0")),
    "set-unknown-accelerator": (("accelerator=quantum",), (
        IN_STAGE, "accelerator 'quantum' is unknown", "cpu")),
    "set-unknown-strategy": (("strategy=dpp",), (IN_STAGE, "strategy 'dpp' is unknown",
                                                 "did you mean 'ddp'?")),
    "set-seq-len-beyond-model": (("seq_len=4096",), ("seq_len 4096 exceeds", "lower seq_len",
                                                     "max_position_embeddings (1024)")),
    "set-evaluate-start-with-fsdp": (("evaluate_start=true", "strategy=fsdp"),
                                     ("evaluate_start", "sharded strategy (fsdp)")),
}

for _name, (_settings, _fragments) in SET_CASES.items():
    case(_name)(lambda tmp, shared, s=_settings, f=_fragments: bad_set(tmp, shared, s, *f))


# ----------------------------------------------------------------------------- command line


@case("unknown-variant")
def _(tmp, shared):
    return BadInput(["train", "moxin-tiny-bsae", "--out", str(tmp / "run")],
                    ("Unknown variant 'moxin-tiny-bsae'", "moxin-tiny-base"), tmp / "run")


@case("unknown-stage")
def _(tmp, shared):
    args = train(tmp / "run", tokenizer=shared.tokenizer)
    args[args.index(STAGE)] = "pretrain-512"
    return BadInput(args, ("no stage 'pretrain-512'", "pretrain-128"), tmp / "run")


@case("set-without-equals")
def _(tmp, shared):
    return BadInput(train(tmp / "run", "lr", tokenizer=shared.tokenizer),
                    ("--set 'lr'", "KEY=VALUE"), tmp / "run")


@case("max-steps-zero")
def _(tmp, shared):
    args = train(tmp / "run", tokenizer=shared.tokenizer)
    args[args.index("--max-steps") + 1] = "0"
    return BadInput(args, ("--max-steps", "positive", "got 0"), tmp / "run")


@case("max-steps-negative")
def _(tmp, shared):
    args = train(tmp / "run", tokenizer=shared.tokenizer)
    args[args.index("--max-steps") + 1] = "-5"
    return BadInput(args, ("--max-steps", "positive", "got -5"), tmp / "run")


@case("max-steps-not-a-number")
def _(tmp, shared):
    args = train(tmp / "run", tokenizer=shared.tokenizer)
    args[args.index("--max-steps") + 1] = "ten"
    return BadInput(args, ("--max-steps", "'ten'"), tmp / "run")


@case("out-is-a-file")
def _(tmp, shared):
    (tmp / "run").write_text("not a folder\n")
    return BadInput(train(tmp / "run", tokenizer=shared.tokenizer),
                    ("run", "is a file", "--out"), tmp / "run")


# ----------------------------------------------------------------------------------- plugins

BROKEN_PLUGIN = '''
raise ImportError("this plugin needs a package that is not installed")
'''

MISSPELLED_PLUGIN = '''
from moxin_core.api import hookimpl

@hookimpl
def moxin_objectivs():
    return {"typo-objective": dict}
'''

DUPLICATE_PLUGIN = '''
from moxin_core.api import CausalLM, DataSpec, Stage, Variant, hookimpl

@hookimpl
def moxin_objectives():
    return {"twice-objective": CausalLM}

@hookimpl
def moxin_variants():
    return {"twice-variant": lambda: Variant("twice-variant", [
        Stage("only", "lm", [DataSpec("embedded")], model="moxin-nano", tokenizer="embedded")])}
'''


@pytest.fixture(scope="module")
def bad_plugins(tmp_path_factory) -> Path:
    """A plugin that fails to import, one with a misspelled hook and two registering the same
    names, pip-installed into a target folder (not the shared venv)."""
    root = tmp_path_factory.mktemp("bad-dists")
    dists = [plugin_distribution(root, "moxin-plugin-broken", "moxin_plugin_broken", BROKEN_PLUGIN),
             plugin_distribution(root, "moxin-plugin-typo", "moxin_plugin_typo", MISSPELLED_PLUGIN),
             plugin_distribution(root, "moxin-plugin-twice-a", "moxin_plugin_twice_a",
                                 DUPLICATE_PLUGIN),
             plugin_distribution(root, "moxin-plugin-twice-b", "moxin_plugin_twice_b",
                                 DUPLICATE_PLUGIN)]
    return install_distributions(dists, root / "site")


@case("plugin-import-fails")
def _(tmp, shared):
    return BadInput(["train", "broken-variant", "--out", str(tmp / "run")],
                    ("Unknown variant 'broken-variant'", "moxin-plugin-broken",
                     "ImportError: this plugin needs a package that is not installed"),
                    tmp / "run", plugin_path_env(shared.plugins))


@case("plugin-misspelled-hook")
def _(tmp, shared):
    return BadInput(train(tmp / "run", "objective=typo-objective", tokenizer=shared.tokenizer),
                    (IN_STAGE, "Unknown objective 'typo-objective'", "moxin-plugin-typo",
                     "unknown hook 'moxin_objectivs' (did you mean 'moxin_objectives'?)"),
                    tmp / "run", plugin_path_env(shared.plugins))


@case("plugin-duplicate-variant")
def _(tmp, shared):
    return BadInput(["train", "twice-variant", "--out", str(tmp / "run")],
                    ("variant name 'twice-variant' is registered twice", "moxin-plugin-twice-a",
                     "moxin-plugin-twice-b"), tmp / "run", plugin_path_env(shared.plugins))


@case("plugin-duplicate-objective")
def _(tmp, shared):
    return BadInput(train(tmp / "run", "objective=twice-objective", tokenizer=shared.tokenizer),
                    ("objective name 'twice-objective' is registered twice",
                     "moxin-plugin-twice-a", "moxin-plugin-twice-b"),
                    tmp / "run", plugin_path_env(shared.plugins))


# ------------------------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def nano_model(tmp_path_factory, nano_tokenizer) -> Path:
    """A moxin-nano model folder with random weights and the nano tokenizer."""
    import torch

    from moxin_core.models.causal_lm import CausalLMFamily
    from moxin_core.models.presets import moxin_nano_config
    from moxin_core.tokenizer import load_tokenizer

    family = CausalLMFamily()
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("nano-model") / "model"
    return family.save(family.build(moxin_nano_config()), load_tokenizer(nano_tokenizer), out,
                       nano_tokenizer)


def damaged_model(tmp: Path, shared: Shared, damage: str) -> Path:
    folder = tmp / "model"
    shutil.copytree(shared.model, folder)
    weights = folder / "model.safetensors"
    if damage == "missing-weights":
        weights.unlink()
    elif damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    elif damage == "garbage-weights":
        weights.write_bytes(b"this is not a safetensors file\n" * 100)
    elif damage == "small-vocab":  # 300 embedding rows, a tokenizer of 512 entries
        from safetensors.torch import load_file, save_file

        config = json.loads((folder / "config.json").read_text())
        config["vocab_size"] = 300
        (folder / "config.json").write_text(json.dumps(config))
        state = {k: (v[:300].clone() if v.shape[0] == 512 else v)
                 for k, v in load_file(weights).items()}
        save_file(state, weights, metadata={"format": "pt"})
    return folder


def train_model(tmp: Path, shared: Shared, damage: str, *fragments: str) -> BadInput:
    folder = damaged_model(tmp, shared, damage)
    return BadInput(train(tmp / "run", f"{STAGE}.model={folder}", tokenizer=shared.tokenizer),
                    (str(folder), *fragments), tmp / "run")


@case("model-missing-weights")
def _(tmp, shared):
    return train_model(tmp, shared, "missing-weights", "model.safetensors")


@case("model-truncated-weights")
def _(tmp, shared):
    return train_model(tmp, shared, "truncated-weights", "model.safetensors", "truncated")


@case("model-garbage-weights")
def _(tmp, shared):
    return train_model(tmp, shared, "garbage-weights", "model.safetensors")


@case("model-vocab-smaller-than-tokenizer")
def _(tmp, shared):
    return train_model(tmp, shared, "small-vocab", "300 embedding rows", "tokenizer")


@case("generate-missing-weights")
def _(tmp, shared):
    folder = damaged_model(tmp, shared, "missing-weights")
    return BadInput(["generate", str(folder), "--prompt", "Question:", "--max-new-tokens", "2"],
                    (str(folder), "model.safetensors"))


@case("generate-vocab-smaller-than-tokenizer")
def _(tmp, shared):
    folder = damaged_model(tmp, shared, "small-vocab")
    return BadInput(["generate", str(folder), "--prompt", "Question:", "--max-new-tokens", "2"],
                    (str(folder), "300 embedding rows", "tokenizer"))


@case("export-garbage-weights")
def _(tmp, shared):
    folder = damaged_model(tmp, shared, "garbage-weights")
    return BadInput(["export", str(folder), "--format", "hf", "--out", str(tmp / "exported")],
                    (str(folder), "model.safetensors"), tmp / "exported")


@case("export-out-is-a-file")
def _(tmp, shared):
    (tmp / "exported").write_text("a file\n")
    return BadInput(["export", str(shared.model), "--format", "hf", "--out",
                     str(tmp / "exported")], ("exported", "is a file"), tmp / "exported")


# -------------------------------------------------------------------------------- tokenizers


def damaged_tokenizer(tmp: Path, shared: Shared) -> Path:
    folder = tmp / "tokenizer"
    shutil.copytree(shared.tokenizer, folder)
    return folder


@case("tokenizer-without-model-file")
def _(tmp, shared):
    folder = damaged_tokenizer(tmp, shared)
    (folder / "tokenizer.model").unlink()
    (folder / "tokenizer.json").unlink()
    out = tmp / "run"
    return BadInput(train(out, tokenizer=folder), (str(folder), "tokenizer.model"), out)


@case("tokenizer-garbage-model-file")
def _(tmp, shared):
    folder = damaged_tokenizer(tmp, shared)
    (folder / "tokenizer.model").write_bytes(b"\x00garbage" * 64)
    out = tmp / "run"
    return BadInput(train(out, tokenizer=folder),
                    (str(folder / "tokenizer.model"), "sentencepiece"), out)


@case("tokenizer-is-a-file")
def _(tmp, shared):
    out = tmp / "run"
    return BadInput(train(out, tokenizer=shared.tokenizer / "tokenizer.json"),
                    ("tokenizer.json", "is a file", "folder"), out)


@case("tokenizer-folder-missing")
def _(tmp, shared):
    out = tmp / "run"
    return BadInput(train(out, tokenizer=tmp / "nope"), ("nope", "does not exist"), out)


# ------------------------------------------------------------------------------------- test


def assert_nothing_looks_complete(out: Path) -> None:
    """No exported model and no manifest saying "complete" under ``out`` (a manifest of a
    running or failed stage is fine)."""
    if not out.is_dir():
        return
    weights = sorted(out.rglob("model.safetensors"))
    assert not weights, f"a failed command left model weights: {weights}"
    for manifest in out.rglob("manifest.json"):
        status = json.loads(manifest.read_text()).get("status")
        assert status != "complete", f"{manifest} says complete after a failure"


def assert_one_paragraph(stderr: str) -> None:
    """The error is the last thing printed: one line (one paragraph) starting ``moxin: error:``."""
    lines = stderr.rstrip("\n").splitlines()
    assert lines and lines[-1].startswith("moxin: error: "), stderr
    assert lines[-1].endswith((".", ")")), lines[-1]


@pytest.fixture(scope="module")
def started(request, tmp_path_factory) -> dict[str, tuple[BadInput, Future]]:
    """Every selected case set up, its command started, two ``moxin`` processes at a time.

    Each process spends seconds importing torch and Lightning before it can refuse its input;
    run one after the other, the table would take minutes.
    """
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", "") == "test_bad_input_gets_a_clear_error"
             and item.module is request.module]
    shared = Shared(request)
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {}
        for name in names:
            bad = CASES[name](tmp_path_factory.mktemp(name), shared)
            runs[name] = bad, pool.submit(run_cli, *bad.args, env=bad.env, timeout=300)
        yield runs
        for _, future in runs.values():  # after -x: do not start what no test will read
            future.cancel()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_a_clear_error(name, started):
    bad, future = started[name]
    result = future.result()
    assert_clean_error(result, *bad.fragments)
    assert_one_paragraph(result.stderr)
    if bad.out is not None:
        assert_nothing_looks_complete(bad.out)


def test_the_table_is_large_enough():
    assert len(CASES) >= 40
