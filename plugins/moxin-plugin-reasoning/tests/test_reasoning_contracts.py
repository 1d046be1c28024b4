"""The plugin's rewards (``math``, ``format``, ``length``) and its ``heldout-math`` evaluator
against moxin_core.testing's contract checks, called as GRPO and ``moxin train`` call them."""

from __future__ import annotations

import pytest

from moxin_core.testing import ContractError, check_evaluator, check_reward

# four completions of two prompts (GRPO repeats each prompt for each of its completions)
PROMPTS = [[1, 40, 41, 42]] * 2 + [[1, 50, 51]] * 2
COMPLETIONS = ["7 + 5 = 12, so the answer is \\boxed{12}.", "The answer is 13.",
               "Half of it: \\boxed{\\frac{1}{2}}", ""]
FIELDS = {"answer": ["12", "12", "0.5", "0.5"], "question": ["7 + 5?"] * 2 + ["Half of 1?"] * 2,
          "completion_ids": [[7] * 30, [7] * 12, [7] * 50, []]}


@pytest.mark.parametrize("name,options,expected", [
    ("math", {}, [1.0, 0.0, 1.0, 0.0]),
    ("format", {}, [1.0, 0.0, 1.0, 0.0]),
    ("format", {"pattern": r"answer is"}, [1.0, 1.0, 0.0, 0.0]),
    ("length", {"max_length": 40, "cache": 20}, [-0.5, 0.0, -1.0, 0.0])])
def test_the_rewards_keep_the_reward_contracts(name, options, expected, moxin_registry):
    factory = moxin_registry.get("reward_functions", name)
    assert check_reward(lambda: factory(**options), PROMPTS, COMPLETIONS, **FIELDS) == expected


def test_a_reward_that_drops_the_unanswered_completions_is_caught(moxin_registry):
    math_reward = moxin_registry.get("reward_functions", "math")()

    def answered_only(prompts, completions, **fields):  # planted bug: skips empty completions
        rewards = math_reward(prompts, completions, **fields)
        return [r for r, c in zip(rewards, completions) if c]

    with pytest.raises(ContractError, match="answered_only breaks the contract 'one reward per "
                                            "completion': 3 rewards for 4 completions"):
        check_reward(lambda: answered_only, PROMPTS, COMPLETIONS, **FIELDS)


def test_heldout_math_keeps_the_evaluator_contracts(moxin_registry, moxin_model_folder):
    scores = check_evaluator(moxin_registry.get("evaluators", "heldout-math"), moxin_model_folder,
                             {"num": 6, "max_new_tokens": 8, "batch_size": 6})
    assert scores["n"] == 6.0 and set(scores) == {"pass@1", "mean_reward", "boxed", "n"}
