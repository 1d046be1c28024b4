"""Held-out evaluators on the embedded instruction data.

* ``heldout-arithmetic``: greedy chat replies to 300 held-out arithmetic word problems; a reply is
  right when its "The answer is N." names the expected number. Scores: ``accuracy``, ``answered``
  (share of replies that state an answer at all), ``n``. With 300 questions one standard error of
  an accuracy near 20% is 2.3 points (100 questions: 4 points).
* ``heldout-preferences``: DPO reward accuracy on held-out preference pairs: the share of pairs
  where ``log-ratio(chosen) > log-ratio(rejected)`` against the ``reference`` model (per-token mean
  log-probabilities, as ``dpo_norm`` uses them). Scores: ``reward_accuracy``, ``margin``, ``n``.
"""

from __future__ import annotations

from typing import Any

import torch

from moxin_core.api import MoxinError, load_model, reply_stop_ids

from moxin_plugin_instruct.chat import pad_token_id
from moxin_plugin_instruct.data import EmbeddedPreferences, extract_answer, heldout_questions


def _load(model_path: str) -> tuple[Any, Any]:
    """The model (eval mode) and its tokenizer, through the model's family."""
    model, tokenizer, _ = load_model(model_path)
    return model, tokenizer


def chat_replies(model: Any, tokenizer: Any, conversations: list[list[dict]],
                 max_new_tokens: int = 64, batch_size: int = 32) -> list[str]:
    """Greedy replies to each conversation (batched, left-padded), cut at ``<|endoftext|>``."""
    stop, pad = reply_stop_ids(tokenizer), pad_token_id(tokenizer)
    replies = []
    for start in range(0, len(conversations), batch_size):
        prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                   for c in conversations[start:start + batch_size]]
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stop,
                                 pad_token_id=pad, temperature=None, top_p=None, top_k=None)
        replies += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [r.strip() for r in replies]


class HeldoutArithmetic:
    """Exact-answer accuracy on ``num`` held-out arithmetic questions (see the module docstring)."""

    def __init__(self, num: int = 300, seed: int = 0, max_new_tokens: int = 64) -> None:
        if num <= 0:
            raise MoxinError(f"heldout-arithmetic: num must be positive, got {num}.")
        self.num, self.seed, self.max_new_tokens = num, seed, max_new_tokens

    def __call__(self, model_path: str) -> dict[str, float]:
        model, tokenizer = _load(model_path)
        questions = heldout_questions(self.num, self.seed)
        replies = chat_replies(model, tokenizer, [q["messages"] for q in questions],
                               self.max_new_tokens)
        answers = [extract_answer(r) for r in replies]
        right = sum(a == q["answer"] for a, q in zip(answers, questions))
        return {"accuracy": right / len(questions),
                "answered": sum(a is not None for a in answers) / len(questions),
                "n": float(len(questions))}


class HeldoutPreferences:
    """DPO reward accuracy of a model against its ``reference`` on held-out pairs."""

    def __init__(self, num: int = 200, seed: int = 0, batch_size: int = 16) -> None:
        if num <= 0:
            raise MoxinError(f"heldout-preferences: num must be positive, got {num}.")
        self.num, self.seed, self.batch_size = num, seed, batch_size

    def __call__(self, model_path: str, reference: str | None = None) -> dict[str, float]:
        from moxin_plugin_instruct.dpo import DPO

        if reference is None:
            raise MoxinError("heldout-preferences needs the reference model (the model DPO "
                             "started from) to compute rewards.")
        policy, tokenizer = _load(model_path)
        ref, _ = _load(reference)
        objective = DPO(loss_type="dpo_norm")
        builder = objective.example_builder(tokenizer, seq_len=policy.config.max_position_embeddings)
        source = EmbeddedPreferences("heldout", seed=self.seed, num_examples=self.num)
        examples = [e for record, _ in source.iter_from(None) for e in builder.feed(record)]
        margins = []
        for start in range(0, len(examples), self.batch_size):
            batch = objective.collate(examples[start:start + self.batch_size])
            with torch.no_grad():
                logps = (objective.sequence_scores(policy, batch)[0]
                         - objective.sequence_scores(ref, batch)[0])
            n = len(logps) // 2
            margins.append(logps[:n] - logps[n:])
        margin = torch.cat(margins)
        return {"reward_accuracy": float((margin > 0).float().mean()),
                "margin": float(margin.mean()), "n": float(len(margin))}
