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

**Reference.** ``reference="model"`` keeps a frozen copy of the starting model and runs it on every
batch. ``reference="precomputed"`` (default) runs the starting model once over exactly the pairs
training will see (the data stream is deterministic), stores their log-probabilities with the run
(``reference_logps.pt`` in the stage folder) and frees the copy: each step then costs only the
policy's forward and backward. A resumed run loads the stored file instead of recomputing it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from moxin_core.data.packing import ResumableStream
from moxin_core.data.sources import Mixture
from moxin_core.errors import MoxinError
from moxin_core.objectives.base import Objective

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


def sequence_logps(model: torch.nn.Module, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, completion_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of the completion tokens, and their count.

    Token ``t`` is predicted from the logits at ``t - 1``; only tokens with
    ``completion_mask`` set count.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].to(logits.dtype)
    token_logps = torch.gather(logits.log_softmax(-1), 2, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


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
        self.module: Any = None
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
        return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion,
                "pair_keys": torch.tensor([e["key"] for e in examples], dtype=torch.long)}

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    # -- reference
    def setup(self, module: Any) -> None:
        """Keep the starting weights: a frozen copy (``model``) or, for ``precomputed``, nothing
        yet (log-probs are computed or loaded at the first step, on the training device)."""
        self.module = module
        if self.reference == "model" and self.reference_model is None:
            self.reference_model = copy.deepcopy(module.model).eval().requires_grad_(False)

    def _logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        total, count = sequence_logps(model, batch["input_ids"], batch["attention_mask"],
                                      batch["completion_mask"])
        return self._per_sequence(total, count), count

    def _per_sequence(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """What the loss compares: summed log-probs (``sigmoid``) or per-token means."""
        return total if self.loss_type == "sigmoid" else total / count.clamp(min=1)

    def _reference_logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
                         ) -> torch.Tensor:
        if self.reference == "model":
            reference = self.reference_model
            if reference is None:
                raise MoxinError("dpo: the reference model was not set up; call "
                                 "objective.setup(module) (MoxinModule does) before training.")
            device = batch["input_ids"].device
            if next(reference.parameters()).device != device:
                reference.to(device)
            with torch.no_grad():
                return self._logps(reference, batch)[0]
        if self._cache is None:
            self._cache = self._load_or_precompute(model)
        rows = []
        for key in batch["pair_keys"].tolist():
            if key not in self._cache:
                raise MoxinError("dpo: a training pair has no precomputed reference log-probs "
                                 f"(cache {self._cache_path()}); the data or max_steps changed "
                                 "since they were computed. Delete the file to recompute it.")
            rows.append(self._cache[key])
        # rows: (chosen sum, chosen count, rejected sum, rejected count); chosen first, as in batches
        stored = torch.stack(rows).to(batch["input_ids"].device)
        return self._per_sequence(torch.cat([stored[:, 0], stored[:, 2]]),
                                  torch.cat([stored[:, 1], stored[:, 3]]))

    def _cache_path(self) -> Path:
        if self.reference_cache:
            return Path(self.reference_cache)
        trainer = getattr(self.module, "_trainer", None)
        root = Path(trainer.default_root_dir) if trainer is not None else Path.cwd()
        return root / CACHE_NAME

    def _load_or_precompute(self, model: torch.nn.Module) -> dict[int, torch.Tensor]:
        trainer = getattr(self.module, "_trainer", None)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "mixture"):
            raise MoxinError("dpo: reference='precomputed' needs the training data up front (a "
                             "MoxinDataModule from moxin_core.train.build_datamodule); with other "
                             "data loaders use reference='model'.")
        pairs = trainer.max_steps * trainer.accumulate_grad_batches * datamodule.micro_batch_size
        fingerprint = {"data": datamodule.mixture.fingerprint(), "seq_len": datamodule.seq_len,
                       "pairs": pairs, "vocab": len(datamodule.tokenizer)}
        path = self._cache_path()
        if path.exists():
            stored = torch.load(path, weights_only=True)
            if stored.get("fingerprint") == fingerprint:
                print(f"Loaded reference log-probs of {len(stored['keys'])} pairs from {path}")
                return dict(zip(stored["keys"].tolist(), stored["logps"]))
            raise MoxinError(f"{path} holds reference log-probs for other data or settings "
                             f"({stored.get('fingerprint')} != {fingerprint}). Delete it to "
                             "recompute, or restore the original settings.")
        keys, logps = self._precompute(model, datamodule, pairs)
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            torch.save({"fingerprint": fingerprint, "keys": keys, "logps": logps}, tmp)
            os.replace(tmp, path)
        return dict(zip(keys.tolist(), logps))

    def _precompute(self, model: torch.nn.Module, datamodule: Any, pairs: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum and count of reference log-probs for the first ``pairs`` training pairs."""
        from tqdm.auto import tqdm

        mixture = Mixture(datamodule.mixture.sources, seed=datamodule.mixture.seed)
        stream = iter(ResumableStream(mixture, self.example_builder(datamodule.tokenizer,
                                                                    datamodule.seq_len), keep=1))
        device = next(model.parameters()).device
        keys, rows = [], []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), tqdm(total=pairs, desc="Reference log-probs", unit="pair") as bar:
                while len(keys) < pairs:
                    examples = [next(stream) for _ in range(min(datamodule.micro_batch_size,
                                                                pairs - len(keys)))]
                    batch = {k: v.to(device) for k, v in self.collate(examples).items()}
                    total, count = sequence_logps(model, batch["input_ids"],
                                                  batch["attention_mask"], batch["completion_mask"])
                    n = len(examples)
                    rows.append(torch.stack([total[:n], count[:n], total[n:], count[n:]], 1).cpu())
                    keys.extend(e["key"] for e in examples)
                    bar.update(n)
        finally:
            model.train(was_training)
        return torch.tensor(keys, dtype=torch.long), torch.cat(rows).float()

    # -- loss
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        policy, counts = self._logps(model, batch)
        reference = self._reference_logps(model, batch)
        pairs = batch["pair_keys"].shape[0]
        if bool((counts == 0).any()):
            raise MoxinError("dpo: a reply without tokens reached the loss; this is a bug in the "
                             "pair builder (please report it).")
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
