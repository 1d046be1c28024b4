"""Direct preference optimisation: pairs of completions, a reference, three losses.

**Records.** ``prompt`` + ``chosen`` + ``rejected`` in any of these shapes:

* TRL's conversational format: ``prompt`` a list of messages, ``chosen``/``rejected`` a list with
  the assistant reply (``[{"role": "assistant", "content": ...}]``);
* the Tulu 3 preference mixture: ``chosen``/``rejected`` whole conversations ending in the
  assistant reply (``prompt`` optional: a string or the same turns);
* plain strings: ``prompt`` the user's text, ``chosen``/``rejected`` the replies.

Each side is rendered with the chat template; only the final reply (with its ``<|endoftext|>``)
counts towards the log-probabilities. A prompt that leaves no room for a reply within ``seq_len``
is skipped and counted (``skipped_long_prompt``); a reply running past ``seq_len`` is cut at
``seq_len`` (``truncated``); a pair whose two replies are identical is skipped and counted
(``skipped_identical``: its loss would be a constant). A missing or empty reply is an error.

**Losses** (``h`` = policy log-ratio of chosen minus rejected, against the reference):

* ``sigmoid``: ``-(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)`` with ``h`` from
  log-probabilities *summed* over the reply tokens; ``e`` is ``label_smoothing`` (conservative DPO,
  0 by default = the DPO paper's loss, TRL's ``sigmoid``).
* ``dpo_norm``: the same on per-token *mean* log-probabilities (Tulu 3's default with beta 5; TRL's
  ``sigmoid_norm``).
* ``ipo``: ``(h - 1 / (2 beta))^2`` on per-token mean log-probabilities (as TRL normalises IPO).

Logged: ``rewards/chosen`` and ``rewards/rejected`` (``beta`` times the log-ratio the loss uses),
``rewards/accuracy`` (share of pairs whose chosen reward is higher), ``rewards/margin``.

**Reference.** ``reference="model"`` registers a frozen copy of the starting model with the
module (``ObjectiveContext.add_frozen_model``: device, precision and sharding apply to it) and runs
it on every batch. ``reference="precomputed"`` (default) runs the starting model once, before the
first step, over exactly the pairs training will see (``ObjectiveContext.training_batches``: each
rank its own), gathers the log-probabilities of all ranks and stores them with the run
(``reference_logps.pt`` in the stage folder): each step then costs only the policy's forward and
backward. A resumed run loads the stored file instead of recomputing it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from moxin_core.api import (MoxinError, Objective, ObjectiveContext, ObjectiveFootprint,
                            fault_point, sequence_logps)

from moxin_plugin_instruct.chat import check_conversation, origin_of, pad_token_id, render

log = logging.getLogger("moxin")

LOSS_TYPES = ("sigmoid", "dpo_norm", "ipo")
REFERENCES = ("precomputed", "model")
DEFAULT_BETA = {"sigmoid": 0.1, "dpo_norm": 5.0, "ipo": 0.1}
CACHE_NAME = "reference_logps.pt"


# ----------------------------------------------------------------------------- records -> pairs


def _reply(value: Any, where: str, side: str) -> tuple[list[dict], dict]:
    """(turns before the reply, the reply) of one side of a pair."""
    if isinstance(value, str):
        if not value.strip():
            raise MoxinError(f"{where}: `{side}` is empty; a preference pair needs two replies.")
        return [], {"role": "assistant", "content": value}
    turns = check_conversation(value, f"{where} ({side})", need_assistant=False)
    if turns[-1]["role"] != "assistant":
        raise MoxinError(f"{where}: `{side}` must end with the assistant's reply, not a "
                         f"{turns[-1]['role']} turn.")
    if not turns[-1]["content"].strip():
        raise MoxinError(f"{where}: the `{side}` reply is empty; a preference pair needs two "
                         "replies.")
    return turns[:-1], turns[-1]


def pair_messages(record: dict) -> tuple[list[dict], dict, dict]:
    """(prompt turns, chosen reply, rejected reply) from any supported record shape."""
    where = origin_of(record)
    for side in ("chosen", "rejected"):
        if side not in record:
            fields = ", ".join(k for k in record if not k.startswith("__")) or "(none)"
            raise MoxinError(f"{where}: no `{side}` field (fields present: {fields}); a "
                             "preference record needs prompt, chosen and rejected.")
    before_c, chosen = _reply(record["chosen"], where, "chosen")
    before_r, rejected = _reply(record["rejected"], where, "rejected")
    if before_c != before_r:
        raise MoxinError(f"{where}: `chosen` and `rejected` continue different conversations; "
                         "both must share the prompt turns.")
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        prompt_turns = [{"role": "user", "content": prompt}]
    elif prompt is None:
        prompt_turns = []
    else:
        prompt_turns = check_conversation(prompt, f"{where} (prompt)", need_assistant=False)
    if before_c:  # whole conversations (Tulu 3): their turns are the prompt
        prompt_turns = before_c
    if not prompt_turns or prompt_turns[-1]["role"] != "user":
        raise MoxinError(f"{where}: the prompt must end with a user turn.")
    return prompt_turns, chosen, rejected


def pair_key(chosen_ids: list[int], rejected_ids: list[int]) -> int:
    """A 63-bit id of a tokenised pair (looks up precomputed reference log-probs)."""
    digest = hashlib.sha256(repr((chosen_ids, rejected_ids)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class PairBuilder:
    """Records -> ``{chosen_ids, chosen_mask, rejected_ids, rejected_mask, key}``."""

    def __init__(self, tokenizer: Any, seq_len: int) -> None:
        self.tokenizer, self.seq_len = tokenizer, seq_len
        self.stats = {"pairs": 0, "truncated": 0, "skipped_long_prompt": 0,
                      "skipped_identical": 0}

    def _side(self, prompt: list[dict], reply: dict) -> tuple[list[int], list[bool], bool] | None:
        ids, mask = render(self.tokenizer, prompt + [reply], train_on="last")
        first = mask.index(True) if True in mask else len(ids)
        if first >= self.seq_len:
            return None
        truncated = len(ids) > self.seq_len
        return ids[: self.seq_len], mask[: self.seq_len], truncated

    def feed(self, record: dict) -> list[dict]:
        prompt, chosen, rejected = pair_messages(record)
        if chosen["content"] == rejected["content"]:
            self.stats["skipped_identical"] += 1
            return []
        sides = [self._side(prompt, chosen), self._side(prompt, rejected)]
        if sides[0] is None or sides[1] is None:
            self.stats["skipped_long_prompt"] += 1
            return []
        (c_ids, c_mask, c_cut), (r_ids, r_mask, r_cut) = sides
        if c_ids == r_ids:  # identical after truncation
            self.stats["skipped_identical"] += 1
            return []
        self.stats["pairs"] += 1
        self.stats["truncated"] += int(c_cut or r_cut)
        return [{"chosen_ids": c_ids, "chosen_mask": c_mask, "rejected_ids": r_ids,
                 "rejected_mask": r_mask, "key": pair_key(c_ids, r_ids)}]

    def state_dict(self) -> dict:
        return {"stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        self.stats = dict(state["stats"])


# ----------------------------------------------------------------------------- math


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             reference_chosen: torch.Tensor, reference_rejected: torch.Tensor, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen/rejected rewards, from log-probabilities already summed
    (``sigmoid``) or averaged per token (``dpo_norm``, ``ipo``) over each reply."""
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    h = chosen_ratio - rejected_ratio
    if loss_type in ("sigmoid", "dpo_norm"):
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h)
                  - label_smoothing * F.logsigmoid(-beta * h))
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise MoxinError(f"dpo: unknown loss_type {loss_type!r}; use {', '.join(LOSS_TYPES)}.")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


# ----------------------------------------------------------------------------- objective


class DPO(Objective):
    """Preference optimisation against a reference (see the module docstring).

    Args:
        loss_type: ``sigmoid``, ``dpo_norm`` or ``ipo``.
        beta: strength of the reference constraint (default per loss: 0.1, 5 for ``dpo_norm``).
        label_smoothing: assumed share of flipped labels (``sigmoid``/``dpo_norm``), in [0, 0.5).
        reference: ``"precomputed"`` or ``"model"`` (a frozen copy run on every batch).
        reference_cache: file for the precomputed log-probs (default: in the stage folder).
    """

    name = "dpo"

    def __init__(self, loss_type: str = "dpo_norm", beta: float | None = None,
                 label_smoothing: float = 0.0, reference: str = "precomputed",
                 reference_cache: str | None = None) -> None:
        if loss_type not in LOSS_TYPES:
            raise MoxinError(f"dpo: loss_type must be one of {', '.join(LOSS_TYPES)}, "
                             f"got {loss_type!r}.")
        if reference not in REFERENCES:
            raise MoxinError(f"dpo: reference must be one of {', '.join(REFERENCES)}, "
                             f"got {reference!r}.")
        if not 0 <= label_smoothing < 0.5:
            raise MoxinError(f"dpo: label_smoothing must be in [0, 0.5), got {label_smoothing}.")
        if label_smoothing and loss_type == "ipo":
            raise MoxinError("dpo: label_smoothing applies to the sigmoid losses, not to ipo.")
        self.loss_type, self.label_smoothing, self.reference = loss_type, label_smoothing, reference
        self.beta = DEFAULT_BETA[loss_type] if beta is None else float(beta)
        if self.beta <= 0:
            raise MoxinError(f"dpo: beta must be positive, got {beta}.")
        self.reference_cache = reference_cache
        self.pad_id = 0
        #: the reference in a bare loop without MoxinModule (reference="model")
        self.reference_model: torch.nn.Module | None = None
        self._cache: dict[int, torch.Tensor] | None = None

    # -- data
    def example_builder(self, tokenizer: Any, seq_len: int) -> PairBuilder:
        self.pad_id = pad_token_id(tokenizer)
        return PairBuilder(tokenizer, seq_len)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Chosen rows first, then rejected rows, right-padded."""
        rows = [(e["chosen_ids"], e["chosen_mask"]) for e in examples] + \
               [(e["rejected_ids"], e["rejected_mask"]) for e in examples]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        completion = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (ids, mask) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            completion[i, : len(ids)] = torch.tensor(mask)
        # checked here, on the CPU (in the loss it would wait for the device at every step)
        if bool((completion.sum(1) == 0).any()):
            raise MoxinError("dpo: a reply without tokens was built; this is a bug in the pair "
                             "builder (please report it).")
        # the keys stay a list on the host: the reference log-probs are looked up by them
        return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion,
                "pair_keys": [int(e["key"]) for e in examples]}

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def memory_footprint(self) -> ObjectiveFootprint:
        """What a DPO step adds for ``moxin plan``: two sequences per pair, and with
        ``reference: model`` a frozen copy run in every step."""
        model = self.reference == "model"
        return ObjectiveFootprint(
            rows_per_example=2, reference_models=int(model), logits_path="log-probs",
            note="dpo: chosen and rejected replies (2 sequences per pair); " + (
                "reference=model: a frozen copy of the model runs in every step" if model else
                "reference=precomputed: the reference runs once before training, not in the "
                "step"))

    # -- reference
    def setup(self, context: ObjectiveContext) -> None:
        """``model``: register a frozen copy of the starting model; ``precomputed``: nothing yet
        (the log-probs are computed or loaded in ``on_fit_start``, on the training device)."""
        super().setup(context)
        if self.reference == "model":
            context.add_frozen_model("reference")

    def on_fit_start(self) -> None:
        if self.reference == "precomputed" and self._cache is None:
            self._cache = self._load_or_precompute()

    def sequence_scores(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row of ``batch`` (chosen rows, then rejected rows): what the loss compares (the
        reply's summed log-probability for ``sigmoid``, its per-token mean otherwise), and the
        reply's token count."""
        total, count = sequence_logps(model, batch["input_ids"], batch["attention_mask"],
                                      batch["completion_mask"])
        return self._per_sequence(total, count), count

    def _per_sequence(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """What the loss compares: summed log-probs (``sigmoid``) or per-token means."""
        return total if self.loss_type == "sigmoid" else total / count.clamp(min=1)

    def _reference(self) -> torch.nn.Module:
        if self.context is not None:
            return self.context.frozen_model("reference")
        if self.reference_model is None:
            raise MoxinError("dpo: reference='model' needs the reference model: train through "
                             "MoxinModule (its setup registers a frozen copy of the starting "
                             "model), or set objective.reference_model in a bare loop.")
        return self.reference_model

    def _reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reference == "model":
            with torch.no_grad():
                return self.sequence_scores(self._reference(), batch)[0]
        if self._cache is None:
            raise MoxinError("dpo: reference='precomputed' needs the training data up front, "
                             "which a Trainer.fit with a MoxinDataModule provides (the log-probs "
                             "are computed when the fit starts); in a bare loop use "
                             "reference='model'.")
        rows = []
        for key in batch["pair_keys"]:
            if key not in self._cache:
                raise MoxinError("dpo: a training pair has no precomputed reference log-probs "
                                 f"(cache {self._cache_path()}); the data or max_steps changed "
                                 "since they were computed. Delete the file to recompute it.")
            rows.append(self._cache[key])
        # rows: (chosen sum, chosen count, rejected sum, rejected count); chosen first, as in batches
        stored = torch.stack(rows).to(batch["input_ids"].device, non_blocking=True)
        return self._per_sequence(torch.cat([stored[:, 0], stored[:, 2]]),
                                  torch.cat([stored[:, 1], stored[:, 3]]))

    def _cache_path(self) -> Path:
        if self.reference_cache:
            return Path(self.reference_cache)
        return self.context.stage_dir / CACHE_NAME

    def _fingerprint(self) -> dict[str, Any]:
        context = self.context
        datamodule = context.datamodule
        return {"data": datamodule.mixture.fingerprint(), "seq_len": datamodule.seq_len,
                "micro_batches": context.training_micro_batches,
                "micro_batch_size": datamodule.micro_batch_size,
                "world_size": context.world_size, "sharding": datamodule.sharding,
                "vocab": len(context.processor)}

    def _load_or_precompute(self) -> dict[int, torch.Tensor]:
        context = self.context
        if context is None:
            raise MoxinError("dpo: reference='precomputed' runs through MoxinModule, which "
                             "calls Objective.setup; in a bare loop use reference='model'.")
        fingerprint = self._fingerprint()
        path = self._cache_path()
        if path.exists():
            stored = torch.load(path, weights_only=True)
            if stored.get("fingerprint") == fingerprint:
                if context.is_rank_zero:
                    print(f"Loaded reference log-probs of {len(stored['keys'])} pairs from {path}")
                return dict(zip(stored["keys"].tolist(), stored["logps"]))
            raise MoxinError(f"{path} holds reference log-probs for other data or settings "
                             f"({stored.get('fingerprint')} != {fingerprint}). Delete it to "
                             "recompute, or restore the original settings.")
        if context.trainer.global_step > 0:
            raise MoxinError(f"dpo: the reference log-probs {path} are missing; they were written "
                             "before the first step of this run and the resumed model can no "
                             "longer produce them. Restore the file, or start the stage again.")
        keys, logps = self._precompute(context)
        gathered = context.gather((keys, logps))  # every rank keeps every pair: any rank's file
        keys = torch.cat([k for k, _ in gathered])
        logps = torch.cat([v for _, v in gathered])
        if context.is_rank_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            torch.save({"fingerprint": fingerprint, "keys": keys, "logps": logps}, tmp)
            os.replace(tmp, path)
        context.barrier()
        return dict(zip(keys.tolist(), logps))

    def _precompute(self, context: ObjectiveContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum and count of reference log-probs of this rank's training pairs (the model is still
        the starting model: this runs before the first step)."""
        from tqdm.auto import tqdm

        model, device = context.model, context.device
        batches = context.training_batches()
        keys, rows = [], []
        was_training = model.training
        model.eval()
        try:
            with (torch.no_grad(), context.forward_context(),
                  tqdm(total=context.training_micro_batches, desc="Reference log-probs",
                       unit="batch", disable=not context.is_rank_zero) as bar):
                for _ in range(context.training_micro_batches):
                    batch = {k: v.to(device) if torch.is_tensor(v) else v
                             for k, v in next(batches).items()}
                    total, count = sequence_logps(model, batch["input_ids"],
                                                  batch["attention_mask"], batch["completion_mask"])
                    n = len(batch["pair_keys"])
                    rows.append(torch.stack([total[:n], count[:n], total[n:], count[n:]], 1)
                                .float().cpu())
                    keys.append(torch.tensor(batch["pair_keys"], dtype=torch.long))
                    bar.update(1)
                    fault_point("dpo-reference")  # the fault tests stop a run here
        finally:
            model.train(was_training)
        return torch.cat(keys), torch.cat(rows)

    # -- loss
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        policy, counts = self.sequence_scores(model, batch)
        reference = self._reference_logps(batch)
        pairs = len(batch["pair_keys"])  # no reply is empty: collate checked
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:], self.beta,
            self.loss_type, self.label_smoothing)
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
        }
        return losses.mean(), metrics
