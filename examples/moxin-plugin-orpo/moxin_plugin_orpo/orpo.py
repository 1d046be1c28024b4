"""ORPO: odds-ratio preference optimisation (Hong, Lee and Thorne, 2024, arXiv:2403.07691).

One stage does instruction tuning and preference alignment together, without a reference model:

    loss = NLL(chosen) - beta * mean(log sigmoid(log_odds))
    log_odds = (lc - lr) - (log(1 - exp(lc)) - log(1 - exp(lr)))

where ``lc``/``lr`` are the per-token mean log-probabilities of the chosen/rejected reply and
NLL is the cross-entropy over every attended token of the chosen conversation (prompt and
reply), as TRL's ``ORPOTrainer`` computes them (``beta`` 0.1 by default there too).

Pairs are built by moxin-plugin-instruct's pair builder (chat template, reply masks, truncation,
identical pairs skipped), so every preference source that DPO reads works here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from moxin_core.api import MoxinError, Objective, selective_log_softmax

from moxin_plugin_instruct.dpo import DPO


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate on both sides of ``-log 2``."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)),
                       torch.log(-torch.expm1(x)))


def orpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, nll: torch.Tensor, beta: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, log_odds)`` from per-token mean log-probabilities of each side and the chosen
    NLL."""
    chosen, rejected = chosen.float(), rejected.float()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    return nll - beta * F.logsigmoid(log_odds).mean(), log_odds


class ORPO(Objective):
    """ORPO over preference pairs (``prompt``/``chosen``/``rejected`` records, as DPO reads).

    Args:
        beta: weight of the odds-ratio term (TRL's default 0.1; the paper uses 0.1-0.25).
    """

    name = "orpo"

    def __init__(self, beta: float = 0.1) -> None:
        if not beta > 0:
            raise MoxinError(f"orpo: beta must be positive, got {beta!r}.")
        self.beta = float(beta)
        self._pairs = DPO(loss_type="dpo_norm", reference="model")  # its builder and collate

    def example_builder(self, tokenizer: Any, seq_len: int) -> Any:
        return self._pairs.example_builder(tokenizer, seq_len)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return self._pairs.collate(examples)

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        input_ids, attention = batch["input_ids"], batch["attention_mask"]
        pairs = input_ids.shape[0] // 2
        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
        logps = selective_log_softmax(logits[:, :-1].float(), input_ids[:, 1:])
        reply = batch["completion_mask"][:, 1:].float()
        if bool((reply.sum(-1) == 0).any()):
            raise MoxinError("orpo: a reply without tokens reached the loss; this is a bug in "
                             "the pair builder (please report it).")
        mean = (logps * reply).sum(-1) / reply.sum(-1)
        attended = attention[:pairs, 1:].bool()
        nll = -logps[:pairs][attended].mean()
        loss, log_odds = orpo_loss(mean[:pairs], mean[pairs:], nll, self.beta)
        return loss, {"nll": nll.detach(), "log_odds": log_odds.detach().mean(),
                      "rewards/accuracy": (mean[:pairs] > mean[pairs:]).float().mean().detach()}
