"""The contract check of reward functions (``moxin_reward_functions``): what GRPO relies on."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

from moxin_core.testing.contracts import ContractError, component_name

#: the record field that holds each completion's token ids (GRPO passes it to every reward)
COMPLETION_IDS = "completion_ids"


def check_reward(factory: Callable[[], Callable[..., list[float]]], prompts: Sequence[Any],
                 completions: Sequence[str], **record_fields: Sequence[Any]) -> list[float]:
    """The contracts of the reward function ``factory()`` called as GRPO calls it:
    ``reward(prompts, completions, **record_fields)``, one prompt and one value of each field per
    completion (GRPO passes ``completion_ids``, the completions' token ids, and the record's
    fields, such as ``answer``):

    * **returns a list** (``list[float]``);
    * **one reward per completion**;
    * **rewards are numbers** (int or float; GRPO refuses None and NaN) and **finite rewards**;
    * **deterministic**: the same inputs give the same rewards, from the same function and from
      a second one the factory builds;
    * **inputs unchanged**: prompts, completions and fields are as they were after the call;
    * **handles empty completions**: with every completion ``""`` (and its ``completion_ids``
      ``[]``) it returns one finite number per completion instead of raising.

    Returns the rewards of ``completions``.
    """
    reward = factory()
    name = component_name(reward)
    count = len(completions)
    for field, values in record_fields.items():
        if len(values) != count:
            raise ValueError(f"check_reward: field {field!r} has {len(values)} values for "
                             f"{count} completions; give one per completion.")
    if len(prompts) != count:
        raise ValueError(f"check_reward: {len(prompts)} prompts for {count} completions; repeat "
                         "each prompt for each of its completions, as GRPO does.")
    inputs = (prompts, completions, record_fields)
    before = copy.deepcopy(inputs)
    first = reward(prompts, completions, **record_fields)
    if (prompts, completions, record_fields) != before:
        raise ContractError(name, "inputs unchanged", "the call changed "
                            f"{_changed(before, inputs)}; GRPO passes the same lists to every "
                            "reward function")
    _check_values(name, first, count, "")
    prompts, completions, record_fields = copy.deepcopy(before)
    again = reward(prompts, completions, **record_fields)
    prompts, completions, record_fields = copy.deepcopy(before)
    fresh = factory()(prompts, completions, **record_fields)
    for values, which in ((again, "a second call"), (fresh, "a second function built alike")):
        if values != first:
            raise ContractError(name, "deterministic", f"{which} gave {values} for the "
                                f"rewards {first}")

    prompts, _, record_fields = copy.deepcopy(before)
    if COMPLETION_IDS in record_fields:
        record_fields[COMPLETION_IDS] = [[] for _ in range(count)]
    try:
        empty = reward(prompts, [""] * count, **record_fields)
    except Exception as error:
        raise ContractError(name, "handles empty completions", f"with every completion '' it "
                            f"raised {type(error).__name__}: {error}") from error
    _check_values(name, empty, count, " for empty completions")
    return first


def _check_values(name: str, values: Any, count: int, where: str) -> None:
    if not isinstance(values, list):
        raise ContractError(name, "returns a list", f"it returned {type(values).__name__} "
                            f"{values!r}{where}")
    if len(values) != count:
        raise ContractError(name, "one reward per completion", f"{len(values)} rewards for "
                            f"{count} completions{where}")
    for index, value in enumerate(values):
        if not isinstance(value, (int, float)):
            raise ContractError(name, "rewards are numbers", f"reward {index} is "
                                f"{type(value).__name__} {value!r}{where}")
        if not math.isfinite(value):
            raise ContractError(name, "finite rewards", f"reward {index} is {value}{where}")


def _changed(before: tuple, after: tuple) -> str:
    names = ("prompts", "completions")
    for label, old, new in zip(names, before[:2], after[:2]):
        if old != new:
            return label
    fields = sorted(set(before[2]) | set(after[2]))
    return ", ".join(f"field {k!r}" for k in fields
                     if before[2].get(k, None) != after[2].get(k, None)) or "the fields"
