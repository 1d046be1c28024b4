"""Contract tests a plugin author runs against their own component.

Each ``check_*`` function exercises one component the way ``moxin train`` will, and raises
:class:`ContractError` (an ``AssertionError``, so pytest shows it as a failed test) naming the
contract that broke and what was seen. Use them from a plain test::

    from moxin_core.testing import check_data_source

    def test_my_source_keeps_the_contracts():
        check_data_source(lambda: MySource(path="data/sample.jsonl"))
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from moxin_core.data.sources import ORIGIN, DataSource
from moxin_core.objectives.base import Objective
from moxin_core.objectives.lm import IGNORE_INDEX
from moxin_core.reporting import sha256_file


class ContractError(AssertionError):
    """A component broke one of moxin's contracts (the message names which)."""

    def __init__(self, component: str, contract: str, detail: str) -> None:
        self.component, self.contract = component, contract
        super().__init__(f"{component} breaks the contract {contract!r}: {detail}")


def file_digests(path: str | Path) -> dict[str, str]:
    """``{name: sha256}`` of every file under the folder ``path`` (names relative to it), or
    ``{".": sha256}`` of the file ``path``; ``{}`` when nothing is there."""
    path = Path(path)
    if path.is_file():
        return {".": sha256_file(path)}
    if not path.is_dir():
        return {}
    return {str(f.relative_to(path)): sha256_file(f)
            for f in sorted(path.rglob("*")) if f.is_file()}


def component_name(component: Any) -> str:
    """How a component is named in a ContractError: its function's or class's name."""
    name = getattr(component, "__qualname__", None) or type(component).__name__
    return name.replace(".<locals>.", ".")


def _plain(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != ORIGIN}


def _take(source: DataSource, count: int, position: Any = None) -> list[tuple[dict, Any]]:
    out = []
    for record, after in source.iter_from(position):
        out.append((_plain(record), copy.deepcopy(after)))
        if len(out) == count:
            break
    return out


# -- data sources -------------------------------------------------------------------------------

def check_data_source(factory: Callable[[], DataSource], records: int = 50,
                      resume_points: Iterable[int] = (0, 1, 7, 23),
                      broken: Callable[[], DataSource] | None = None,
                      broken_at: str | None = None) -> None:
    """The contracts of a data source built by ``factory`` (called several times):

    * **deterministic**: two sources built alike yield the same records in the same order;
    * **resumable**: ``iter_from(position)`` with the position yielded after record *k* yields
      records *k+1, k+2, ...* exactly (no record skipped or repeated);
    * **fingerprint stable**: two sources built alike have the same non-empty fingerprint;
    * **records are mappings** with string keys;
    * **errors name file and line** (with ``broken``, a factory of the source over bad input,
      and ``broken_at``, where the bad record is, e.g. ``"broken.jsonl:3"``): reading it raises
      :class:`~moxin_core.MoxinError` (what ``moxin train`` prints as one paragraph, not a
      traceback) whose message contains ``broken_at``.
    """
    name = type(factory()).__name__
    first, second = _take(factory(), records), _take(factory(), records)
    if not first:
        raise ContractError(name, "yields records", "iter_from(None) yielded nothing")
    for index, ((a, _), (b, _)) in enumerate(zip(first, second)):
        if not isinstance(a, dict) or not all(isinstance(k, str) for k in a):
            raise ContractError(name, "records are mappings", f"record {index} is {a!r}")
        if a != b:
            raise ContractError(name, "deterministic", f"record {index} differs between two "
                                f"sources built alike: {_short(a)} vs {_short(b)}")
    if len(first) != len(second):
        raise ContractError(name, "deterministic", f"{len(first)} vs {len(second)} records")
    for k in resume_points:
        if k >= len(first) - 1:
            continue
        resumed = _take(factory(), len(first) - k - 1, first[k][1])
        expected = [r for r, _ in first[k + 1:]]
        got = [r for r, _ in resumed]
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b),
                      min(len(got), len(expected)))
            seen = _short(got[at]) if at < len(got) else "nothing"
            raise ContractError(name, "resumable", f"iter_from(position after record {k}) "
                                f"should yield record {k + 1 + at} ({_short(expected[at])}) "
                                f"next but yielded {seen}")
    fingerprints = factory().fingerprint(), factory().fingerprint()
    if not fingerprints[0] or fingerprints[0] != fingerprints[1]:
        raise ContractError(name, "fingerprint stable", f"fingerprints {fingerprints[0]!r} "
                            f"and {fingerprints[1]!r} of two sources built alike")
    if broken is not None:
        _check_broken_input(name, broken, broken_at)


def _check_broken_input(name: str, broken: Callable[[], DataSource], where: str | None) -> None:
    from moxin_core.errors import MoxinError

    contract = "errors name file and line"
    try:
        for _ in broken().iter_from(None):
            pass
    except MoxinError as error:
        if where and where not in str(error):
            raise ContractError(name, contract, f"the error does not say {where!r}: "
                                f"{str(error)[:200]!r}") from None
        return
    except Exception as error:  # noqa: BLE001 - any other exception is the broken contract
        raise ContractError(name, contract, f"reading the bad input raised "
                            f"{type(error).__name__}: {str(error)[:160]!r}, not a MoxinError "
                            f"naming {where or 'the file and line'}") from None
    raise ContractError(name, contract, "reading the bad input raised no error: a bad record "
                        "must stop the run naming its file and line")


def _short(record: Any) -> str:
    text = repr(record)
    return text if len(text) < 80 else text[:77] + "..."


# -- objectives ---------------------------------------------------------------------------------

def objective_batch(objective: Objective, tokenizer: Any, records: Iterable[dict],
                    seq_len: int = 64, size: int = 2) -> dict[str, torch.Tensor]:
    """One collated micro-batch of ``size`` examples built from ``records`` by the objective's
    own example builder (what ``moxin train``'s data module does)."""
    builder = objective.example_builder(tokenizer, seq_len)
    examples: list[dict] = []
    for record in records:
        examples.extend(builder.feed(dict(record)))
        if len(examples) >= size:
            return objective.collate(examples[:size])
    raise ContractError(type(objective).__name__, "builds examples",
                        f"the records gave {len(examples)} example(s), fewer than {size}")


def check_objective(factory: Callable[[], Objective], model_factory: Callable[[], torch.nn.Module],
                    tokenizer: Any, records: Iterable[dict], seq_len: int = 64,
                    masked_tail: int = 4) -> None:
    """The contracts of an objective built by ``factory``, on models from ``model_factory``
    (called for fresh, identical models) and examples its builder makes from ``records``:

    * **finite, differentiable loss**: a finite scalar whose backward gives finite gradients to
      the model's parameters;
    * **label mask respected** (batches with ``input_ids`` and ``labels``): with the last
      ``masked_tail`` labels of each row masked (``-100``), changing those tokens leaves the loss
      unchanged (a loss that reads targets from ``input_ids`` instead changes);
    * **gradient accumulation**: two micro-batches accumulated on one model give the sum of
      their separate gradients (batches whose tensors hold one row per example);
    * **bf16**: under ``torch.autocast(bfloat16)`` the loss is finite and within 5% of fp32;
    * **state resumable**: ``load_state_dict(state_dict())`` on a fresh objective gives the same
      state.
    """
    records = list(records)
    objective = factory()
    name = type(objective).__name__
    batch = objective_batch(objective, tokenizer, records, seq_len, size=4)
    model = model_factory()
    loss, metrics = objective.loss(model, batch)
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and torch.isfinite(loss)):
        raise ContractError(name, "finite scalar loss", f"loss(model, batch) gave {loss!r}")
    if not loss.requires_grad:
        raise ContractError(name, "differentiable loss", "the loss has no gradient")
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads or not all(torch.isfinite(g).all() for g in grads):
        raise ContractError(name, "differentiable loss",
                            "backward left no gradient or a non-finite one in the model")

    if "input_ids" in batch and "labels" in batch:
        _check_label_mask(name, lambda: _fresh(factory, tokenizer, seq_len), model_factory,
                          batch, masked_tail)
    _check_accumulation(name, lambda: _fresh(factory, tokenizer, seq_len), model_factory,
                        tokenizer, records, seq_len)
    with torch.no_grad():
        full = float(_fresh(factory, tokenizer, seq_len).loss(model_factory(), batch)[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = float(_fresh(factory, tokenizer, seq_len).loss(model_factory(), batch)[0])
    if not math.isfinite(low) or abs(low - full) > 0.05 * max(abs(full), 1e-3):
        raise ContractError(name, "bf16", f"loss {low} under bf16 autocast vs {full} in fp32")
    state = objective.state_dict()
    fresh = factory()
    fresh.load_state_dict(copy.deepcopy(state))
    if fresh.state_dict() != state:
        raise ContractError(name, "state resumable", "load_state_dict(state_dict()) on a fresh "
                            "objective gives another state")


def _check_label_mask(name: str, factory: Callable[[], Objective], model_factory: Callable,
                      batch: dict, tail: int) -> None:
    masked = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    masked["labels"][:, -tail:] = IGNORE_INDEX
    if not (masked["labels"] != IGNORE_INDEX).any():
        return  # nothing left to score: the batch is too short to test this
    changed = dict(masked)
    ids = masked["input_ids"].clone()
    ids[:, -tail:] = (ids[:, -tail:] + 1) % max(int(ids.max()) + 1, 2)
    changed["input_ids"] = ids
    model = model_factory()
    with torch.no_grad():
        # a fresh objective for each call: this contract is about the mask alone
        before = float(factory().loss(model, masked)[0])
        after = float(factory().loss(model, changed)[0])
    if abs(before - after) > 1e-6 * max(1.0, abs(before)):
        raise ContractError(name, "label mask respected", f"changing only tokens whose labels "
                            f"are masked moved the loss from {before} to {after}: the loss "
                            "scores positions the labels exclude")


def _fresh(factory: Callable[[], Objective], tokenizer: Any, seq_len: int) -> Objective:
    """A new objective whose example builder was made (objectives learn token ids there), as
    in a run, where the builder exists before the first loss."""
    objective = factory()
    objective.example_builder(tokenizer, seq_len)
    return objective


def _check_accumulation(name: str, factory: Callable[[], Objective], model_factory: Callable,
                        tokenizer: Any, records: list[dict], seq_len: int) -> None:
    """Accumulating two micro-batches (loss, backward, loss, backward) gives the sum of their
    separate gradients: a loss that keeps hidden state from one call to the next breaks it."""
    batch = objective_batch(factory(), tokenizer, records, seq_len, size=4)
    halves = [{k: (v[i:i + 2] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == 4
                   else v) for k, v in batch.items()} for i in (0, 2)]

    def grads(objective: Objective, parts: list[dict]) -> list[torch.Tensor]:
        model = model_factory()
        for part in parts:
            try:
                objective.loss(model, part)[0].backward()
            except RuntimeError as error:
                raise ContractError(name, "gradient accumulation", f"backward of a second "
                                    f"micro-batch failed ({str(error).splitlines()[0]})") from error
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    accumulated = grads(factory(), halves)
    separate = [a + b for a, b in zip(grads(factory(), halves[:1]), grads(factory(), halves[1:]))]
    if len(accumulated) != len(separate) or not all(
            torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(accumulated, separate)):
        raise ContractError(name, "gradient accumulation", "two micro-batches accumulated on one "
                            "model do not give the sum of their separate gradients: the loss "
                            "depends on what was computed before it")
