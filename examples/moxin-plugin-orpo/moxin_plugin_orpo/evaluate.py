"""``preference-accuracy``: on held-out preference pairs, the share where the model gives the
chosen reply a higher per-token mean log-probability than the rejected one (the quantity ORPO's
odds ratio pushes apart; no reference model needed). Scores: ``accuracy``, ``margin`` (mean
difference of the mean log-probabilities), ``n``."""

from __future__ import annotations

import torch

from moxin_core.api import MoxinError, load_model

from moxin_plugin_instruct.data import EmbeddedPreferences
from moxin_plugin_orpo.orpo import ORPO


class PreferenceAccuracy:
    def __init__(self, num: int = 200, seed: int = 0, batch_size: int = 16) -> None:
        if num <= 0 or batch_size <= 0:
            raise MoxinError(f"preference-accuracy: num and batch_size must be positive, got "
                             f"{num} and {batch_size}.")
        self.num, self.seed, self.batch_size = num, seed, batch_size

    def __call__(self, model_path: str) -> dict[str, float]:
        model, tokenizer, _family = load_model(model_path)
        objective = ORPO()
        builder = objective.example_builder(tokenizer, model.config.max_position_embeddings)
        source = EmbeddedPreferences("heldout", seed=self.seed, num_examples=self.num)
        examples = [e for record, _ in source.iter_from(None) for e in builder.feed(record)]
        margins = []
        for start in range(0, len(examples), self.batch_size):
            batch = objective.collate(examples[start:start + self.batch_size])
            with torch.no_grad():
                scores, _count = objective._pairs.sequence_scores(model, batch)
            n = len(scores) // 2
            margins.append(scores[:n] - scores[n:])
        margin = torch.cat(margins)
        return {"accuracy": float((margin > 0).float().mean()), "margin": float(margin.mean()),
                "n": float(len(margin))}
