"""GRPO maths on hand-made tensors, and moxin's loss equal to TRL's GRPOTrainer on one batch."""

from __future__ import annotations

import os

import pytest
import torch

from moxin_core.errors import MoxinError
from moxin_plugin_reasoning.grpo import (GRPO, Rollout, completion_logps, group_advantages,
                                         grpo_loss, k3_kl)

from reasoning_models import tiny_model


def test_group_advantages_normalise_per_group_batch_or_not():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv, zero = group_advantages(rewards, 4, "group")
    std = torch.tensor([1.0, 0, 0, 0]).std()  # unbiased, as TRL's nanstd
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (std + 1e-4)
    torch.testing.assert_close(adv[:4], expected)
    torch.testing.assert_close(adv[4:], torch.zeros(4))  # no variance: no signal
    assert zero.tolist() == [False] * 4 + [True] * 4
    adv, _ = group_advantages(rewards, 4, "none")
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]))
    adv, zero = group_advantages(rewards, 4, "batch")
    torch.testing.assert_close(adv[:4], torch.tensor([0.75, -0.25, -0.25, -0.25])
                               / (rewards.std() + 1e-4))
    assert not zero.any()
    with pytest.raises(MoxinError, match="scale_rewards"):
        group_advantages(rewards, 4, "groups")


def test_k3_kl_is_the_low_variance_estimator():
    logps = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.0, -1.0, -2.5])
    expected = [0.0, float(torch.exp(torch.tensor(1.0)) - 1 - 1),
                float(torch.exp(torch.tensor(-2.0)) + 2 - 1)]
    torch.testing.assert_close(k3_kl(logps, ref), torch.tensor(expected))
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def _hand_batch():
    # two completions: 3 and 2 tokens; ratios above and below the clip range
    logps = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.6, 0.1]]))
    old = torch.log(torch.tensor([[0.25, 0.2, 0.8], [0.6, 0.6, 0.1]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    return logps, old, adv, mask


def test_clipped_surrogate_and_each_aggregation():
    logps, old, adv, mask = _hand_batch()
    ratio = torch.exp(logps - old)  # [[2, 1, 1.125], [0.5, 1, 1]]
    # positive advantage: min(r, clip(r)) -> 1.2 for r=2, 1.125 stays; negative: -max(...)
    per_token = torch.tensor([[-1.2, -1.0, -1.125], [0.8, 1.0, 1.0]])
    loss, stats = grpo_loss(logps, old, adv, mask, loss_type="grpo")
    expected = ((per_token * mask).sum(-1) / mask.sum(-1)).mean()
    torch.testing.assert_close(loss, expected)
    loss, _ = grpo_loss(logps, old, adv, mask, loss_type="dr_grpo", max_completion_length=4)
    torch.testing.assert_close(loss, (per_token * mask).sum() / (2 * 4))
    loss, _ = grpo_loss(logps, old, adv, mask, loss_type="dapo")
    torch.testing.assert_close(loss, (per_token * mask).sum() / 5)
    loss, _ = grpo_loss(logps, old, adv, mask, loss_type="dapo", num_tokens=10.0)
    torch.testing.assert_close(loss, (per_token * mask).sum() / 10)
    # clip fractions: one token above 1 + eps with A > 0, one below 1 - eps with A < 0
    assert stats["clip_ratio/high"].item() == pytest.approx(1 / 5)
    assert stats["clip_ratio/low"].item() == pytest.approx(1 / 5)
    assert ratio[0, 0] == pytest.approx(2.0)
    # separate epsilons: a wider upper range lets r = 2 through further
    loss_hi, stats = grpo_loss(logps, old, adv, mask, epsilon_high=1.5, loss_type="dapo")
    per_token[0, 0] = -2.0
    torch.testing.assert_close(loss_hi, (per_token * mask).sum() / 5)
    assert stats["clip_ratio/high"].item() == 0.0
    # the KL term is added per token with its coefficient
    ref = logps - 0.3
    loss, _ = grpo_loss(logps, old, adv, mask, loss_type="dapo")
    loss_kl, stats = grpo_loss(logps, old, adv, mask, ref_logps=ref, beta=0.5, loss_type="dapo")
    kl = k3_kl(logps, ref)
    torch.testing.assert_close(loss_kl, loss + 0.5 * (kl * mask).sum() / 5)
    torch.testing.assert_close(stats["kl"], (kl * mask).sum() / 5)
    with pytest.raises(MoxinError, match="loss_type"):
        grpo_loss(logps, old, adv, mask, loss_type="ppo")


def test_gradient_flows_only_through_unclipped_tokens():
    logps, old, adv, mask = _hand_batch()
    logps = logps.clone().requires_grad_(True)
    loss, _ = grpo_loss(logps, old, adv, mask, loss_type="dapo")
    loss.backward()
    grad = logps.grad
    assert grad[0, 0] == 0.0  # ratio 2 > 1.2 with A > 0: clipped, no gradient
    assert grad[1, 0] == 0.0  # ratio 0.5 < 0.8 with A < 0: clipped
    assert grad[1, 2] == 0.0  # masked
    assert grad[0, 1] != 0.0 and grad[1, 1] != 0.0


def test_group_of_one_is_a_clear_error():
    with pytest.raises(MoxinError, match="num_generations must be at least 2.*undefined"):
        GRPO(num_generations=1)


# -- parity with TRL
G, TEMPERATURE, C = 3, 0.7, 6


def _trl_inputs(tokenizer):
    """Two prompts (one left-padded), G completions each, right-padded; old and reference
    log-probs away from the current policy so ratios differ from 1."""
    torch.manual_seed(0)
    prompts = [[1, 40, 41, 42, 43], [1, 50, 51]]
    width = max(map(len, prompts))
    prompt_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts]).repeat_interleave(G, 0)
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p)
                                for p in prompts]).repeat_interleave(G, 0)
    lengths = [6, 4, 2, 5, 6, 3]
    completion_ids = torch.randint(10, 500, (2 * G, C))
    completion_mask = torch.tensor([[1] * n + [0] * (C - n) for n in lengths])
    advantages = torch.tensor([1.2, -0.4, -0.8, 0.5, 0.0, -0.5])
    noise = torch.randn(2 * G, C)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
            "completion_ids": completion_ids, "completion_mask": completion_mask,
            "advantages": advantages, "noise": noise}


def _moxin_loss(loss_type: str, beta: float, correction: bool, inputs, old, ref):
    model = tiny_model(0).train()
    objective = GRPO(num_generations=G, temperature=TEMPERATURE, max_new_tokens=C, beta=beta,
                     loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28,
                     kl_bias_correction=correction,
                     iterations=2, reward_functions={"none": lambda p, c, **k: [0.0] * len(c)})
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    objective._cache["k"] = Rollout(input_ids, attention, inputs["completion_mask"],
                                    inputs["advantages"], old, ref if beta else None, {})
    loss, metrics = objective.loss(model, {"key": "k", "prompt_ids": inputs["prompt_ids"]})
    return loss, metrics


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta, correction", [(0.0, False), (0.04, False), (0.04, True)])
def test_loss_equals_trl_grpo_trainer(tokenizer, hf_folder, tmp_path, loss_type, beta,
                                      correction):
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    inputs = _trl_inputs(tokenizer)
    policy = tiny_model(0)
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        current = completion_logps(policy, input_ids, attention, C, TEMPERATURE)
    old = current + 0.6 * inputs["noise"]  # importance ratios far from 1, some clipped
    ref = current - 0.2 * inputs["noise"].abs()
    ours, metrics = _moxin_loss(loss_type, beta, correction, inputs, old, ref)

    args = GRPOConfig(output_dir=str(tmp_path), num_generations=G, temperature=TEMPERATURE,
                      max_completion_length=C, beta=beta, loss_type=loss_type, epsilon=0.2,
                      epsilon_high=0.28, per_device_train_batch_size=2 * G, use_cpu=True,
                      bf16=False, report_to="none", save_strategy="no", disable_tqdm=True,
                      num_iterations=2, use_bias_correction_kl=correction, seed=0)
    trainer = GRPOTrainer(model=str(hf_folder), reward_funcs=lambda completions, **k: [0.0] * len(completions),
                          args=args, train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}),
                          processing_class=tokenizer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trl_inputs = {k: inputs[k] for k in ("prompt_ids", "prompt_mask", "completion_ids",
                                          "completion_mask", "advantages")}
    trl_inputs["old_per_token_logps"] = old
    trl_inputs["num_items_in_batch"] = inputs["completion_mask"].sum()
    if beta:
        trl_inputs["ref_per_token_logps"] = ref
    theirs = trainer._compute_loss(trainer.model, trl_inputs)
    assert abs(ours.item() - theirs.item()) < 1e-5, (ours.item(), theirs.item())
    trl_metrics = trainer._metrics["train"]
    assert metrics["clip_ratio/high"].item() == pytest.approx(
        trl_metrics["clip_ratio/high_mean"][-1], abs=1e-6)
    assert metrics["clip_ratio/low"].item() == pytest.approx(
        trl_metrics["clip_ratio/low_mean"][-1], abs=1e-6)
    assert metrics["clip_ratio/high"] > 0 and metrics["clip_ratio/low"] > 0
    if beta:
        assert metrics["kl"].item() == pytest.approx(trl_metrics["kl"][-1], abs=1e-5)
