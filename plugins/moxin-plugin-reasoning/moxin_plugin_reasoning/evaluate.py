"""``heldout-math``: answer accuracy on the held-out embedded problems.

Greedy decoding of the first ``num`` held-out problems (the GRPO prompt: the question with
DeepScaleR's boxed-answer instruction, in the chat template). Scores, written to the stage's
``eval.json`` by ``moxin train``:

* ``pass@1``: the share answered correctly (the ``math`` reward's rule: the last ``\\boxed{}``,
  else the last number, compared with math-verify);
* ``mean_reward``: the mean of the rewards named in ``rewards`` (default ``math`` and ``format``,
  weights 1), per completion;
* ``boxed``: the share of replies with a ``\\boxed{}`` answer; ``n``: problems;
* with ``samples > 1``: ``pass@k`` for each ``k`` in ``ks`` from ``samples`` sampled completions
  per problem at ``temperature`` (the unbiased estimator ``1 - C(n-c, k) / C(n, k)``), beside
  the greedy ``pass@1``.

With 300 problems one standard error of an accuracy near 30% is 2.6 points.
"""

from __future__ import annotations

from math import comb

from moxin_core.api import MoxinError, load_model, reply_stop_ids

from moxin_plugin_reasoning.generation import SamplingParams, TransformersGenerator, pad_id
from moxin_plugin_reasoning.grpo import PromptBuilder
from moxin_plugin_reasoning.problems import LEVELS, check_levels, heldout_problems
from moxin_plugin_reasoning.rewards import REWARDS, FormatReward, MathReward


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of ``c`` correct among ``n`` samples (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def replies(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
            samples: int = 1, temperature: float = 0.0, seed: int = 0) -> list[list[int]]:
    """``samples`` completions per prompt (greedy at temperature 0), ``batch_size`` sequences
    at a time, cut after the reply's stop token."""
    params = dict(stop_ids=tuple(reply_stop_ids(tokenizer)), pad_id=pad_id(tokenizer))
    generator, out = TransformersGenerator(), []
    per_batch = max(1, batch_size // samples)
    for start in range(0, len(prompts), per_batch):
        sampling = SamplingParams(samples, max_new_tokens, temperature, seed=seed + start,
                                  **params)
        out += generator.generate(model, prompts[start:start + per_batch], sampling).ids
    return out


class HeldoutMath:
    """Greedy pass@1 and mean reward on held-out problems (module docstring)."""

    def __init__(self, num: int = 300, seed: int = 0, levels: list[int] = list(LEVELS),
                 max_new_tokens: int = 64, batch_size: int = 64, samples: int = 1,
                 ks: list[int] | None = None, temperature: float = 0.6,
                 rewards: list[str] | None = None) -> None:
        if num <= 0 or samples <= 0:
            raise MoxinError(f"heldout-math: num and samples must be positive, got {num}, "
                             f"{samples}.")
        ks = list(ks or ([1, samples] if samples > 1 else [1]))
        if any(k < 1 or k > samples for k in ks):
            raise MoxinError(f"heldout-math: every k in ks must be in 1..samples ({samples}), "
                             f"got {ks}.")
        unknown = [r for r in (rewards or []) if r not in REWARDS]
        if unknown:
            raise MoxinError(f"heldout-math: unknown rewards {unknown} (known: "
                             f"{', '.join(REWARDS)}).")
        self.num, self.seed, self.levels = num, seed, check_levels(levels)
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.samples, self.ks, self.temperature = samples, ks, temperature
        self.rewards = list(rewards or ["math", "format"])

    def __call__(self, model_path: str) -> dict[str, float]:
        model, tokenizer, _ = load_model(model_path)
        problems = heldout_problems(self.num, self.seed, self.levels)
        builder = PromptBuilder(tokenizer, budget=10**9)
        prompts = [builder.prompt_ids(p["problem"]) for p in problems]
        answers = [p["answer"] for p in problems]
        greedy = replies(model, tokenizer, prompts, self.max_new_tokens, self.batch_size)
        texts = tokenizer.batch_decode(greedy, skip_special_tokens=True)
        functions = {"math": MathReward(), "format": FormatReward(),
                     "length": REWARDS["length"](max_length=self.max_new_tokens,
                                                 cache=max(1, self.max_new_tokens // 4))}
        # every reward once: pass@1 is the math reward, boxed the format reward
        values = {name: functions[name](prompts, texts, answer=answers, completion_ids=greedy)
                  for name in {*self.rewards, "math", "format"}}
        total = [sum(v) for v in zip(*(values[name] for name in self.rewards))]
        scores = {"pass@1": sum(values["math"]) / len(texts),
                  "mean_reward": sum(total) / len(total),
                  "boxed": sum(values["format"]) / len(texts), "n": float(len(problems))}
        if self.samples > 1:
            scores.update(self._pass_at_k(model, tokenizer, prompts, answers))
        return scores

    def _pass_at_k(self, model, tokenizer, prompts, answers) -> dict[str, float]:
        n = self.samples
        sampled = replies(model, tokenizer, prompts, self.max_new_tokens, self.batch_size,
                          samples=n, temperature=self.temperature, seed=self.seed)
        texts = tokenizer.batch_decode(sampled, skip_special_tokens=True)
        hits = MathReward()(prompts, texts, answer=[a for a in answers for _ in range(n)])
        correct = [int(sum(hits[i:i + n])) for i in range(0, len(hits), n)]
        return {f"pass@{k}_sampled": sum(pass_at_k(n, c, k) for c in correct) / len(correct)
                for k in self.ks}
