"""GRPO with verifiable rewards (DeepSeekMath's GRPO; DeepScaleR's recipe) in the Lightning loop.

**One step.** A training batch holds prompts (question + reference answer). The objective samples
``num_generations`` (G) completions per prompt through its generator (``generation.py``), scores
each with the weighted sum of its reward functions, and turns rewards into advantages relative to
the prompt's group: ``A = r - mean(group)``, divided by ``std(group) + 1e-4`` (``scale_rewards``
``"group"``), by the whole batch's std (``"batch"``) or not at all (``"none"``, Dr. GRPO). The
policy loss per completion token is the clipped surrogate
``-min(rho * A, clip(rho, 1 - epsilon_low, 1 + epsilon_high) * A)`` with
``rho = pi(token) / pi_old(token)``, plus ``beta`` times the k3 estimate of the KL to the frozen
reference, ``exp(ref - logp) - (ref - logp) - 1``. Log-probabilities are those of the sampling
distribution: logits divided by ``temperature``. Aggregation (``loss_type``):

* ``grpo``: the mean over each completion's tokens, then over completions;
* ``dr_grpo``: the sum over every token divided by ``completions * max_new_tokens`` (a constant);
* ``dapo``: the sum over every token divided by the number of completion tokens of the global
  micro-batch (all ranks).

These follow TRL's ``GRPOTrainer`` to 1e-5 (the tests compare them on one batch).

**Policy updates per rollout** (``iterations``, mu): the data module hands each batch to ``mu``
consecutive optimizer steps; the first samples and scores the rollout and keeps it with the
log-probabilities of the sampling policy (``pi_old``); the later ones reuse it, so the importance
ratio moves away from 1 and the clipping acts. With ``mu = 1`` ``pi_old`` is the current policy
(detached), as in TRL.

**Exact resume.** Sampling is seeded per rollout from ``seed``, the rank and a rollout counter (the
run's RNG streams are untouched); the counter and any rollout still to be reused are the
objective's checkpointed state, so a killed and resumed run samples and trains bit-identically.

**Bad input.** A reward function that raises, or returns None or NaN, stops the run with an error
naming the function and the record; ``num_generations`` 1 is an error (the group advantage is
undefined); prompts longer than ``seq_len - max_new_tokens`` tokens are skipped and counted
(``skipped_too_long`` in the stage's data stats); a record without the question or answer field is
an error naming its file and line.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from moxin_core.api import (ORIGIN, MoxinError, Objective, ObjectiveFootprint, fault_point,
                            reply_stop_ids, selective_log_softmax)

from moxin_plugin_reasoning.generation import Completions, SamplingParams, build_generator, pad_id
from moxin_plugin_reasoning.problems import INSTRUCTION

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
QUESTION_FIELDS = ("problem", "question", "prompt")
REFERENCE = "reference"


# -- the maths (pure functions on tensors)
def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group",
                     batch_std: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages of ``rewards`` (prompt-major: ``G`` consecutive completions per prompt).

    Returns ``(advantages, zero_std)``: ``zero_std[i]`` is True when completion ``i``'s group
    (``"batch"``: the batch) has no reward variance, so its advantage is 0. ``batch_std``: the std
    over every rank's rewards for ``scale="batch"`` (default: over ``rewards``).
    """
    if scale not in SCALE_REWARDS:
        raise MoxinError(f"grpo: scale_rewards must be one of {', '.join(SCALE_REWARDS)}, "
                         f"got {scale!r}.")
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1).repeat_interleave(group_size)
    if scale == "batch":
        std = (batch_std if batch_std is not None else rewards.std()).expand_as(rewards)
    else:
        std = grouped.std(dim=1).repeat_interleave(group_size)
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + 1e-4)
    return advantages, torch.isclose(std, torch.zeros_like(std))


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """The low-variance KL estimate per token: ``exp(ref - logp) - (ref - logp) - 1`` (>= 0)."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, *, ref_logps: torch.Tensor | None = None, beta: float = 0.0,
              epsilon_low: float = 0.2, epsilon_high: float = 0.2, loss_type: str = "grpo",
              max_completion_length: int | None = None,
              num_tokens: torch.Tensor | float | None = None, kl_bias_correction: bool = False
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of one micro-batch (module docstring) and its statistics.

    Args:
        logps, old_logps, ref_logps: ``(B, T)`` per-token log-probabilities of the completions
            under the policy (with gradient), the sampling policy and the reference.
        advantages: ``(B,)``.
        mask: ``(B, T)`` 1 for completion tokens.
        max_completion_length: ``dr_grpo``'s constant divisor per completion.
        num_tokens: ``dapo``'s divisor (default: the tokens in ``mask``).
        kl_bias_correction: multiply the per-token KL by the importance ratio (DeepSeek-V3.2's
            unbiased reverse-KL gradient; TRL's default). Off: the plain k3 loss of verl and
            DeepScaleR.

    Returns:
        ``(loss, stats)``; stats: ``kl`` (masked mean), ``clip_ratio/low``, ``clip_ratio/high``
        (shares of tokens clipped below with a negative advantage, above with a positive one).
    """
    if loss_type not in LOSS_TYPES:
        raise MoxinError(f"grpo: loss_type must be one of {', '.join(LOSS_TYPES)}, "
                         f"got {loss_type!r}.")
    mask = mask.to(logps.dtype)
    adv = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    stats = {}
    tokens = mask.sum().clamp(min=1.0)
    if beta != 0.0:
        if ref_logps is None:
            raise MoxinError("grpo: beta != 0 needs the reference log-probabilities.")
        kl = k3_kl(logps, ref_logps)
        if kl_bias_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
        stats["kl"] = ((kl * mask).sum() / tokens).detach()
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "dr_grpo":
        if not max_completion_length:
            raise MoxinError("grpo: loss_type 'dr_grpo' needs max_completion_length.")
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    else:
        divisor = tokens if num_tokens is None else torch.as_tensor(num_tokens).clamp(min=1.0)
        loss = (per_token * mask).sum() / divisor
    with torch.no_grad():
        low = (ratio < 1 - epsilon_low) & (adv < 0)
        high = (ratio > 1 + epsilon_high) & (adv > 0)
        stats["clip_ratio/low"] = (low * mask).sum() / tokens
        stats["clip_ratio/high"] = (high * mask).sum() / tokens
    return loss, stats


def completion_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     completion_width: int, temperature: float = 1.0) -> torch.Tensor:
    """``(B, completion_width)`` log-probabilities of the last ``completion_width`` tokens of
    ``input_ids`` at ``temperature`` (logits divided by it), as sampling saw them."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False, logits_to_keep=completion_width + 1).logits
    logits = logits[:, :-1] / temperature
    return selective_log_softmax(logits, input_ids[:, -completion_width:]).float()


# -- examples
class PromptBuilder:
    """Records -> prompt examples (an ``ExampleBuilder``): the question rendered as a chat turn
    with ``instruction`` appended, tokenised; too-long prompts skipped and counted."""

    def __init__(self, tokenizer: Any, budget: int, question_field: str | None = None,
                 answer_field: str = "answer", instruction: str | None = INSTRUCTION,
                 system: str | None = None) -> None:
        if tokenizer.chat_template is None:
            raise MoxinError("grpo: the tokenizer has no chat template (the Moxin tokenizer "
                             "folders carry it).")
        self.tokenizer, self.budget = tokenizer, budget
        self.question_field, self.answer_field = question_field, answer_field
        self.instruction, self.system = instruction, system
        self.stats = {"prompts": 0, "skipped_too_long": 0}

    def _question(self, record: dict) -> Any:
        origin = record.get(ORIGIN, "a record")
        fields = [self.question_field] if self.question_field else list(QUESTION_FIELDS)
        for name in fields:
            if name in record:
                return record[name]
        present = ", ".join(k for k in record if k != ORIGIN) or "(none)"
        raise MoxinError(f"{origin}: no question field {' or '.join(map(repr, fields))} (fields: "
                         f"{present}); set the grpo objective's question_field.")

    def messages(self, question: Any) -> list[dict]:
        if isinstance(question, list):  # a conversational prompt, used as it is
            return question
        text = str(question).strip()
        if self.instruction:
            text = f"{text} {self.instruction}"
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": text}]

    def prompt_ids(self, question: Any) -> list[int]:
        text = self.tokenizer.apply_chat_template(self.messages(question),
                                                  add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def feed(self, record: dict) -> list[dict]:
        origin = record.get(ORIGIN, "a record")
        question = self._question(record)
        if self.answer_field not in record or record[self.answer_field] is None:
            present = ", ".join(k for k in record if k != ORIGIN) or "(none)"
            raise MoxinError(f"{origin}: no answer field {self.answer_field!r} (fields: "
                             f"{present}); set the grpo objective's answer_field.")
        ids = self.prompt_ids(question)
        if len(ids) > self.budget:
            self.stats["skipped_too_long"] += 1
            return []
        self.stats["prompts"] += 1
        fields = {k: v for k, v in record.items()
                  if k not in (ORIGIN, self.answer_field) and k not in QUESTION_FIELDS
                  and isinstance(v, (str, int, float, bool))}
        fields["answer"] = str(record[self.answer_field])
        return [{"prompt_ids": ids, "fields": fields, "origin": str(origin)}]

    def state_dict(self) -> dict:
        return {"stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        self.stats = dict(state["stats"])


def _key(prompt_ids: Sequence[Sequence[int]]) -> str:
    digest = hashlib.sha256()
    for ids in prompt_ids:
        digest.update(bytes(str(list(ids)), "ascii") + b";")
    return digest.hexdigest()[:24]


@dataclass
class Rollout:
    """One batch's sampled completions and everything the updates need (CPU or device)."""

    input_ids: torch.Tensor       # (B*G, P + C) prompt (left-padded) + completion (right-padded)
    attention_mask: torch.Tensor  # (B*G, P + C)
    completion_mask: torch.Tensor  # (B*G, C)
    advantages: torch.Tensor      # (B*G,)
    old_logps: torch.Tensor | None  # (B*G, C) when iterations > 1
    ref_logps: torch.Tensor | None  # (B*G, C) when beta != 0
    metrics: dict[str, float]
    uses: int = 0

    def to(self, device: torch.device) -> Rollout:
        move = (lambda t: None if t is None else t.to(device))
        return Rollout(move(self.input_ids), move(self.attention_mask),
                       move(self.completion_mask), move(self.advantages), move(self.old_logps),
                       move(self.ref_logps), dict(self.metrics), self.uses)

    def state(self) -> dict:
        cpu = self.to(torch.device("cpu"))
        return dict(cpu.__dict__)


class GRPO(Objective):
    """Group Relative Policy Optimisation with verifiable rewards (module docstring).

    Args:
        num_generations: completions per prompt (G, at least 2).
        temperature, top_p, top_k: sampling (top_k 0: off).
        max_new_tokens: the completion budget; prompts get ``seq_len - max_new_tokens``.
        rewards: ``{reward function name: weight}`` (or a list of names, weight 1), looked up
            in ``moxin_reward_functions``; the reward is their weighted sum.
        reward_options: ``{name: {option: value}}`` for the reward factories.
        reward_functions: ``{name: callable}`` used as they are (Python API), beside ``rewards``.
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"``.
        epsilon_low, epsilon_high: the clipping range ``[1 - low, 1 + high]``.
        beta: the KL coefficient (0: no reference model is kept).
        kl_bias_correction: weight the KL term by the importance ratio (see ``grpo_loss``).
        loss_type: ``"grpo"``, ``"dr_grpo"`` or ``"dapo"``.
        iterations: policy updates per rollout (mu >= 1).
        question_field, answer_field: record fields (question default: the first of
            ``problem``, ``question``, ``prompt``).
        instruction: appended to every question (DeepScaleR's boxed-answer request).
        system: an optional system turn.
        generator: ``"transformers"``, ``"vllm"`` or ``"package.module:factory"``;
            ``generator_options``: its options.
        mask_truncated: leave completions that hit ``max_new_tokens`` out of the loss.
        seed: the sampling seed.
    """

    name = "grpo"
    tokens_after_loss = True  # the completions counted are generated inside loss

    def __init__(self, num_generations: int = 8, temperature: float = 0.6, top_p: float = 1.0,
                 top_k: int = 0, max_new_tokens: int = 256,
                 rewards: Mapping[str, float] | Sequence[str] | None = None,
                 reward_options: Mapping[str, dict] | None = None,
                 reward_functions: Mapping[str, Callable] | None = None,
                 scale_rewards: str = "group", epsilon_low: float = 0.2,
                 epsilon_high: float = 0.2, beta: float = 0.001,
                 kl_bias_correction: bool = False, loss_type: str = "grpo",
                 iterations: int = 1, question_field: str | None = None,
                 answer_field: str = "answer", instruction: str | None = INSTRUCTION,
                 system: str | None = None, generator: str = "transformers",
                 generator_options: dict | None = None, mask_truncated: bool = False,
                 seed: int = 0) -> None:
        if int(num_generations) < 2:
            raise MoxinError(f"grpo: num_generations must be at least 2, got {num_generations}: "
                             "the advantage of a completion is its reward relative to the other "
                             "completions of its prompt, undefined in a group of one.")
        if loss_type not in LOSS_TYPES:
            raise MoxinError(f"grpo: loss_type must be one of {', '.join(LOSS_TYPES)}, "
                             f"got {loss_type!r}.")
        if scale_rewards not in SCALE_REWARDS:
            raise MoxinError(f"grpo: scale_rewards must be one of {', '.join(SCALE_REWARDS)}, "
                             f"got {scale_rewards!r}.")
        if int(iterations) < 1 or int(max_new_tokens) < 1 or temperature <= 0:
            raise MoxinError("grpo: iterations and max_new_tokens must be at least 1 and "
                             f"temperature positive (got {iterations}, {max_new_tokens}, "
                             f"{temperature}).")
        if isinstance(rewards, str):
            rewards = [rewards]
        if rewards is None and not reward_functions:
            rewards = {"math": 1.0}
        weights = dict(rewards) if isinstance(rewards, Mapping) else {r: 1.0 for r in rewards or []}
        self.weights = {name: float(w) for name, w in weights.items()}
        self.reward_options = {k: dict(v) for k, v in (reward_options or {}).items()}
        self.reward_functions: dict[str, Callable] = dict(reward_functions or {})
        for name in self.reward_functions:
            self.weights.setdefault(name, 1.0)
        self.num_generations, self.temperature = int(num_generations), float(temperature)
        self.top_p, self.top_k, self.max_new_tokens = float(top_p), int(top_k), int(max_new_tokens)
        self.scale_rewards, self.loss_type = scale_rewards, loss_type
        self.epsilon_low, self.epsilon_high = float(epsilon_low), float(epsilon_high)
        self.beta, self.iterations = float(beta), int(iterations)
        self.kl_bias_correction = bool(kl_bias_correction)
        self.batch_repeats = self.iterations
        self.question_field, self.answer_field = question_field, answer_field
        self.instruction, self.system = instruction, system
        self.generator_spec, self.generator_options = generator, dict(generator_options or {})
        self.generator: Any = None
        self.mask_truncated, self.seed = bool(mask_truncated), int(seed)
        self.tokenizer: Any = None
        self.reference_model: torch.nn.Module | None = None  # a bare loop may set it
        self._rollouts_made = 0
        self._cache: dict[str, Rollout] = {}
        self._tokens = 0

    # -- the contract
    def example_builder(self, processor: Any, seq_len: int) -> PromptBuilder:
        budget = seq_len - self.max_new_tokens
        if budget < 8:
            raise MoxinError(f"grpo: seq_len {seq_len} leaves {budget} tokens for the prompt "
                             f"after max_new_tokens {self.max_new_tokens}; raise seq_len.")
        self.tokenizer = processor
        return PromptBuilder(processor, budget, self.question_field, self.answer_field,
                             self.instruction, self.system)

    def collate(self, examples: list[dict]) -> dict[str, Any]:
        pad = pad_id(self.tokenizer) if self.tokenizer is not None else 0
        width = max(len(e["prompt_ids"]) for e in examples)
        ids = [[pad] * (width - len(e["prompt_ids"])) + e["prompt_ids"] for e in examples]
        mask = [[0] * (width - len(e["prompt_ids"])) + [1] * len(e["prompt_ids"])
                for e in examples]
        return {"prompt_ids": torch.tensor(ids), "prompt_mask": torch.tensor(mask),
                "fields": [e["fields"] for e in examples],
                "origins": [e["origin"] for e in examples],
                "key": _key(e["prompt_ids"] for e in examples)}

    def setup(self, context: Any) -> None:
        super().setup(context)
        if self.tokenizer is None:
            self.tokenizer = context.processor
        if self.iterations > 1 and context.trainer.accumulate_grad_batches > 1:
            raise MoxinError("grpo: iterations > 1 needs grad_accum 1 (each reuse of a rollout "
                             "is its own optimizer step); raise micro_batch_size instead.")
        if self.beta != 0.0:
            context.add_frozen_model(REFERENCE)

    def num_tokens(self, batch: dict[str, Any]) -> int:
        return self._tokens

    def memory_footprint(self) -> ObjectiveFootprint:
        """What a GRPO step adds for ``moxin plan``: its completions per prompt, and a frozen
        reference for the KL term when ``beta`` is not 0."""
        return ObjectiveFootprint(
            rows_per_example=self.num_generations, reference_models=int(self.beta != 0),
            logits_path="log-probs",
            note=f"grpo: {self.num_generations} completions per prompt of up to seq_len "
                 "tokens; the generation before the loss (its KV cache) needs far less than "
                 "the training step" + ("; beta != 0: a frozen reference for the KL term"
                                        if self.beta else ""))

    def state_dict(self) -> dict[str, Any]:
        return {"rollouts_made": self._rollouts_made,
                "cache": {k: r.state() for k, r in self._cache.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rollouts_made = int(state.get("rollouts_made", 0))
        self._cache = {k: Rollout(**v) for k, v in state.get("cache", {}).items()}

    # -- helpers
    def _reference(self) -> torch.nn.Module | None:
        if self.beta == 0.0:
            return None
        if self.reference_model is not None:
            return self.reference_model
        if self.context is None:
            raise MoxinError("grpo: beta != 0 needs a reference model: run it through "
                             "MoxinModule (it registers one) or set objective.reference_model.")
        return self.context.frozen_model(REFERENCE)

    def _rewards(self) -> dict[str, Callable]:
        missing = [n for n in self.weights if n not in self.reward_functions]
        if missing:
            registry = getattr(self.context, "registry", None)
            if registry is None:
                from moxin_core.api import Registry

                registry = Registry()
            for name in missing:
                factory = registry.get("reward_functions", name)
                options = self.reward_options.get(name, {})
                try:
                    self.reward_functions[name] = factory(**options)
                except TypeError as exc:
                    raise MoxinError(f"reward function {name!r}: bad options {sorted(options)} "
                                     f"({exc}).") from None
        return {n: self.reward_functions[n] for n in self.weights}

    def score(self, completions: list[str], completion_ids: list[list[int]],
              fields: list[dict], origins: list[str], prompts: list[Any]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total reward per completion and each function's rewards (prompt-major)."""
        g = self.num_generations
        per_sample = {k: [f[k] for f in fields for _ in range(g)]
                      for k in fields[0] if all(k in f for f in fields)}
        prompts_rep = [p for p in prompts for _ in range(g)]
        by_function: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(completions))
        for name, function in self._rewards().items():
            try:
                values = function(prompts_rep, completions, completion_ids=completion_ids,
                                  **per_sample)
            except MoxinError:
                raise
            except Exception as exc:  # noqa: BLE001 - named and re-raised as a user error
                record = self._failing_record(function, prompts_rep, completions, completion_ids,
                                              per_sample, origins)
                raise MoxinError(f"reward function {name!r} raised {type(exc).__name__}: {exc} "
                                 f"(scoring {record}). Fix the function or the record.") from exc
            values = list(values) if values is not None else []
            if len(values) != len(completions):
                raise MoxinError(f"reward function {name!r} returned {len(values)} rewards for "
                                 f"{len(completions)} completions.")
            for i, value in enumerate(values):
                if value is None or not isinstance(value, (int, float)) or math.isnan(value):
                    raise MoxinError(f"reward function {name!r} returned {value!r} for a "
                                     f"completion of {origins[i // g]}: rewards must be numbers "
                                     "(not None or NaN).")
            by_function[name] = torch.tensor(values, dtype=torch.float32)
            total += self.weights[name] * by_function[name]
        return total, by_function

    def _failing_record(self, function, prompts, completions, completion_ids, per_sample,
                        origins) -> str:
        g = self.num_generations
        for i, origin in enumerate(origins):
            part = slice(i * g, (i + 1) * g)
            try:
                function(prompts[part], completions[part], completion_ids=completion_ids[part],
                         **{k: v[part] for k, v in per_sample.items()})
            except Exception:  # noqa: BLE001
                return origin
        return "the batch of " + ", ".join(origins)

    def _rollout_seed(self) -> int:
        rank = self.context.rank if self.context is not None else 0
        text = f"moxin-grpo:{self.seed}:{rank}:{self._rollouts_made}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")

    def rollout(self, model: torch.nn.Module, batch: dict[str, Any]) -> Rollout:
        """Sample, score and prepare one batch's completions (no gradient)."""
        if self.generator is None:
            self.generator = build_generator(self.generator_spec, self.generator_options)
        tokenizer, g = self.tokenizer, self.num_generations
        pad = pad_id(tokenizer)
        prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
        prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask)]
        params = SamplingParams(g, self.max_new_tokens, self.temperature, self.top_p, self.top_k,
                                tuple(reply_stop_ids(tokenizer)), pad, self._rollout_seed())
        out: Completions = self.generator.generate(model, prompts, params)
        fault_point("grpo-generate")  # the fault tests stop a run here
        self._rollouts_made += 1
        texts = tokenizer.batch_decode(out.ids, skip_special_tokens=True)
        prompt_texts = tokenizer.batch_decode(prompts, skip_special_tokens=False)
        rewards, by_function = self.score(texts, out.ids, batch["fields"], batch["origins"],
                                          prompt_texts)
        batch_std = None
        if self.scale_rewards == "batch":
            everything = torch.cat([r for r in self._gather(rewards)])
            batch_std = everything.std()
        advantages, zero_std = group_advantages(rewards, g, self.scale_rewards, batch_std)

        device = prompt_ids.device
        width = max(1, max(map(len, out.ids)))
        completion = torch.full((len(out.ids), width), pad, dtype=torch.long)
        for i, ids in enumerate(out.ids):
            completion[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        lengths = torch.tensor([len(x) for x in out.ids])
        attended = (torch.arange(width)[None] < lengths[:, None]).long()
        completion_mask = attended.clone()
        if self.mask_truncated:  # still attended to, but out of the loss
            completion_mask[torch.tensor(out.truncated)] = 0
        input_ids = torch.cat([prompt_ids.repeat_interleave(g, 0), completion.to(device)], 1)
        attention = torch.cat([prompt_mask.repeat_interleave(g, 0), attended.to(device)], 1)
        completion_mask = completion_mask.to(device)
        old = ref = None
        with torch.no_grad():
            if self.iterations > 1:
                old = completion_logps(model, input_ids, attention, width, self.temperature)
            reference = self._reference()
            if reference is not None:
                ref = completion_logps(reference, input_ids, attention, width, self.temperature)
        lengths = lengths.float()
        generated = float(lengths.sum())
        groups = zero_std.view(-1, g)[:, 0].float()
        metrics = {"reward": rewards.mean().item(), "reward_std": rewards.std().item(),
                   "zero_std_groups": groups.mean().item(),
                   "completion/mean_length": lengths.mean().item(),
                   "completion/max_length": lengths.max().item(),
                   "completion/truncated": sum(out.truncated) / len(out.truncated),
                   "generation/tokens_per_s": generated / max(out.seconds, 1e-9)}
        for name, values in by_function.items():
            metrics[f"rewards/{name}/mean"] = values.mean().item()
            metrics[f"rewards/{name}/std"] = values.std().item()
        return Rollout(input_ids, attention, completion_mask, advantages.to(device), old, ref,
                       metrics)

    def _gather(self, rewards: torch.Tensor) -> list[torch.Tensor]:
        if self.context is None:
            return [rewards]
        return [torch.as_tensor(r) for r in self.context.gather(rewards.cpu())]

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        key = batch["key"]
        rollout = self._cache.get(key)
        if rollout is None:
            rollout = self.rollout(model, batch)
        else:
            rollout = rollout.to(batch["prompt_ids"].device)
        width = rollout.completion_mask.shape[1]
        logps = completion_logps(model, rollout.input_ids, rollout.attention_mask, width,
                                 self.temperature)
        old = rollout.old_logps if rollout.old_logps is not None else logps.detach()
        num_tokens = None
        if self.loss_type == "dapo":
            tokens = rollout.completion_mask.sum().float()
            world = self.context.world_size if self.context is not None else 1
            if self.context is not None and world > 1:
                tokens = self.context.all_reduce_sum(tokens)
            num_tokens = tokens / world
        loss, stats = grpo_loss(logps, old, rollout.advantages, rollout.completion_mask,
                                ref_logps=rollout.ref_logps, beta=self.beta,
                                epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high,
                                loss_type=self.loss_type,
                                max_completion_length=self.max_new_tokens, num_tokens=num_tokens,
                                kl_bias_correction=self.kl_bias_correction)
        rollout.uses += 1
        if rollout.uses < self.iterations:
            self._cache[key] = rollout
        else:
            self._cache.pop(key, None)
        self._tokens = int(rollout.attention_mask.sum())
        metrics = {k: torch.tensor(v) for k, v in rollout.metrics.items()}
        metrics.update(stats)
        return loss, metrics
