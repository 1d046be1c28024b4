"""``heldout-shapes``: exact-match accuracy on held-out shapes questions, per question type.

Greedy replies (a few tokens) to the first ``num`` held-out pictures' questions, asked with the
training prompt; a reply is right when its first word is the answer (case and punctuation
ignored). Scores: ``accuracy`` over the one-word question types, ``accuracy/<type>`` and
``n/<type>`` for each, ``chance`` (the accuracy of guessing uniformly within each type, averaged
over the questions asked), ``n``, and ``accuracy/colour+shape`` with ``chance/colour+shape``
over the colour and shape questions together. Captions are not scored.
"""

from __future__ import annotations

import itertools
import re

import torch

from moxin_core.api import MoxinError, load_model

from moxin_plugin_vlm.shapes import ANSWERS, QUESTIONS, iter_records

KINDS = tuple(ANSWERS)


def first_word(text: str) -> str:
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words else ""


class HeldoutShapes:
    def __init__(self, num: int = 200, seed: int = 0, max_new_tokens: int = 4,
                 prompt_format: str = "chat") -> None:
        if num <= 0:
            raise MoxinError(f"heldout-shapes: num must be positive, got {num}.")
        self.num, self.seed, self.max_new_tokens = num, seed, max_new_tokens
        self.prompt_format = prompt_format

    def prompt_ids(self, tokenizer, question: str) -> list[int]:
        if self.prompt_format == "pure":
            return [tokenizer.bos_token_id] + tokenizer(f"In: {question}\nOut: ",
                                                        add_special_tokens=False)["input_ids"]
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                            tokenize=True, add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
        return list(ids) if ids and ids[0] == tokenizer.bos_token_id else \
            [tokenizer.bos_token_id] + list(ids)

    def __call__(self, model_path: str) -> dict[str, float]:
        model, processor, _ = load_model(model_path)
        if not hasattr(processor, "image"):
            raise MoxinError(f"heldout-shapes scores vision-language models; {model_path} is not "
                             "one.")
        size = processor.transform.size
        records = [r for _, r in itertools.islice(
            iter_records(self.seed, "heldout", 0, size, KINDS), self.num)]
        tok = processor.tokenizer
        right: dict[str, list[bool]] = {k: [] for k in KINDS}
        for record in records:
            ids = torch.tensor([self.prompt_ids(tok, record["question"])])
            pixels = processor.image(record["image"])[None]
            out = model.generate(ids, pixel_values=pixels, max_new_tokens=self.max_new_tokens,
                                 do_sample=False, pad_token_id=tok.eos_token_id)
            reply = tok.decode(out[0], skip_special_tokens=True)
            right[record["type"]].append(first_word(reply) == record["answer"])
        asked = [k for k in KINDS if right[k]]
        total = sum(len(right[k]) for k in asked)
        scores = {"accuracy": sum(sum(right[k]) for k in asked) / total,
                  "chance": sum(len(right[k]) / len(ANSWERS[k]) for k in asked) / total,
                  "n": float(total)}
        scores.update({f"accuracy/{k}": sum(right[k]) / len(right[k]) for k in asked})
        scores.update({f"n/{k}": float(len(right[k])) for k in asked})
        seen = [k for k in ("colour", "shape") if right[k]]
        if seen:  # what a picture shows, as against counting and placing
            n = sum(len(right[k]) for k in seen)
            scores["accuracy/colour+shape"] = sum(sum(right[k]) for k in seen) / n
            scores["chance/colour+shape"] = sum(len(right[k]) / len(ANSWERS[k])
                                                for k in seen) / n
        return scores


assert set(KINDS) <= set(QUESTIONS)
