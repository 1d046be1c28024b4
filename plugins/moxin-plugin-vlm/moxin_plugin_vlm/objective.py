"""The ``vlm`` objective: next-token loss on the assistant replies of image-text conversations.

A record (``data.py``) becomes one example: the conversation rendered with the chat template
(``prompt_format: chat``, the Moxin template; labels on the assistant replies and their
end-of-turn token) or prismatic's plain format for a "pure" language model (``prompt_format:
pure``: ``In: {question}\\nOut: {answer}</s>`` per exchange, labels on the answers), the image as
the encoder's tensor. The model inserts the image's patches after BOS and ignores them in the
loss. Text-only and image records mix in one batch.

``trainable`` picks what trains (prismatic's stages): ``align`` the projector only;
``finetune`` the projector and the language model (vision frozen); ``full-finetune``
everything. Frozen parameters keep ``requires_grad=False`` and are left out of the optimizer.

Bad records stop the run naming the record: an ``<image>`` marker without an image, an image
without exactly one marker, a missing or unreadable image file, a conversation that does not
alternate human/gpt. A record whose reply starts beyond ``seq_len`` is skipped and counted
(``skipped_no_reply`` in the stage's data statistics).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from moxin_core.api import IGNORE_INDEX, MoxinError, Objective, ORIGIN

from moxin_plugin_vlm.data import IMAGE_MARKER

#: the chat-template tag around the trained part of an assistant turn
GENERATION_MARK = re.compile(r"{%-?\s*generation\s*-?%}")
TRAINABLE = {"align": ("projector",), "finetune": ("projector", "language_model"),
             "full-finetune": ("projector", "language_model", "vision")}
FORMATS = ("chat", "pure")
ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant",
         "system": "system"}


def load_image(image: Any, where: str):
    """A PIL image from a PIL image or a path; RGB conversion is the transform's."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image
    try:
        with Image.open(image) as opened:
            opened.load()
            return opened.copy()
    except FileNotFoundError:
        raise MoxinError(f"{where}: image {image} does not exist.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise MoxinError(f"{where}: image {image} cannot be read ({error}).") from None


def messages_of(record: dict, where: str) -> list[dict[str, str]]:
    """Chat messages of a LLaVA record, the ``<image>`` marker checked and removed."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise MoxinError(f"{where}: `conversations` must be a non-empty list of turns.")
    messages, markers = [], 0
    for i, turn in enumerate(turns):
        role = ROLES.get(turn.get("from", turn.get("role")) if isinstance(turn, dict) else None)
        value = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        if role is None or not isinstance(value, str):
            raise MoxinError(f"{where}: turn {i} needs `from` (human/gpt) and a string `value`.")
        markers += value.count(IMAGE_MARKER)
        text = value.replace(IMAGE_MARKER, "").strip()
        messages.append({"role": role, "content": text})
    roles = [m["role"] for m in messages if m["role"] != "system"]
    if any(role != ("user" if i % 2 == 0 else "assistant") for i, role in enumerate(roles)):
        raise MoxinError(f"{where}: turns must alternate human/gpt starting with human, got "
                         f"{[t.get('from', t.get('role')) for t in turns]}.")
    has_image = record.get("image") is not None
    if markers and not has_image:
        raise MoxinError(f"{where}: the conversation has an {IMAGE_MARKER} marker but the record "
                         "no image.")
    if has_image and markers != 1:
        raise MoxinError(f"{where}: a record with an image needs exactly one {IMAGE_MARKER} "
                         f"marker in its conversation, found {markers}.")
    if not any(m["role"] == "assistant" for m in messages):
        raise MoxinError(f"{where}: the conversation has no gpt/assistant reply to train on.")
    return messages


class _Builder:
    def __init__(self, objective: VisionLanguageSFT, processor: Any, seq_len: int) -> None:
        self.objective, self.processor, self.seq_len = objective, processor, seq_len
        self.tokenizer = processor.tokenizer
        self.stats = {"conversations": 0, "images": 0, "truncated": 0}

    def _render(self, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
        tok = self.tokenizer
        if self.objective.prompt_format == "pure":
            ids, mask = [tok.bos_token_id], [False]
            for m in messages:
                if m["role"] == "user":
                    part = tok(f"In: {m['content']}\nOut: ", add_special_tokens=False)["input_ids"]
                    ids, mask = ids + part, mask + [False] * len(part)
                elif m["role"] == "assistant":
                    part = tok(m["content"], add_special_tokens=False)["input_ids"]
                    part = part + [tok.eos_token_id]
                    ids, mask = ids + part, mask + [True] * len(part)
            return ids, mask
        if not tok.chat_template or not GENERATION_MARK.search(tok.chat_template):
            raise MoxinError("The tokenizer's chat template does not mark assistant replies "
                             "({% generation %}); use prompt_format: pure or a Moxin tokenizer.")
        rendered = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
        ids, mask = list(rendered["input_ids"]), [bool(m) for m in rendered["assistant_masks"]]
        if not ids or ids[0] != tok.bos_token_id:  # patches go after BOS
            ids, mask = [tok.bos_token_id] + ids, [False] + mask
        return ids, mask

    def feed(self, record: dict) -> list[dict]:
        where = str(record.get(ORIGIN, "record"))
        messages = messages_of(record, where)
        ids, mask = self._render(messages)
        if len(ids) > self.seq_len:
            ids, mask = ids[: self.seq_len], mask[: self.seq_len]
            self.stats["truncated"] += 1
        labels = [i if m else IGNORE_INDEX for i, m in zip(ids, mask)]
        if all(t == IGNORE_INDEX for t in labels):  # the reply starts beyond seq_len
            self.stats["skipped_no_reply"] = self.stats.get("skipped_no_reply", 0) + 1
            return []
        example: dict[str, Any] = {"input_ids": ids, "labels": labels, "pixel_values": None}
        if record.get("image") is not None:
            image = load_image(record["image"], where)
            try:
                example["pixel_values"] = self.processor.image(image)
            except (OSError, ValueError) as error:
                raise MoxinError(f"{where}: image cannot be converted ({error}).") from None
            self.stats["images"] += 1
        self.stats["conversations"] += 1
        return [example]

    def state_dict(self) -> dict:
        return {"stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        self.stats = dict(state.get("stats", self.stats))


class VisionLanguageSFT(Objective):
    """Loss on assistant replies of image-text conversations (module docstring)."""

    name = "vlm"

    def __init__(self, trainable: str = "finetune", prompt_format: str = "chat") -> None:
        if trainable not in TRAINABLE:
            raise MoxinError(f"vlm: trainable must be one of {', '.join(TRAINABLE)}, "
                             f"got {trainable!r}.")
        if prompt_format not in FORMATS:
            raise MoxinError(f"vlm: prompt_format must be one of {', '.join(FORMATS)}, "
                             f"got {prompt_format!r}.")
        self.trainable, self.prompt_format = trainable, prompt_format
        self.pad_id = 0

    def example_builder(self, processor: Any, seq_len: int) -> _Builder:
        if not hasattr(processor, "image"):
            raise MoxinError("The vlm objective needs a vision-language model (the vlm family's "
                             "processor); this stage's model is a text model.")
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return _Builder(self, processor, seq_len)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[row, :n] = torch.tensor(e["input_ids"])
            labels[row, :n] = torch.tensor(e["labels"])
            mask[row, :n] = 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask,
                 "has_image": torch.tensor([e["pixel_values"] is not None for e in examples])}
        images = [e["pixel_values"] for e in examples if e["pixel_values"] is not None]
        if images:
            batch["pixel_values"] = torch.stack(images)
        return batch

    def setup(self, context) -> None:
        super().setup(context)
        if context.model is not None:  # built already: fail before anything else is set up
            self._check(context.model)

    @staticmethod
    def _check(model: torch.nn.Module) -> None:
        if not hasattr(model, "vision"):
            raise MoxinError("The vlm objective trains a vision-language model (the vlm family); "
                             "this stage's model is not one.")

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Freeze what the ``trainable`` setting leaves out (a sharded model too)."""
        self._check(model)
        train = TRAINABLE[self.trainable]
        for part in ("vision", "projector", "language_model"):
            getattr(model, part).requires_grad_(part in train)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(**batch)
        return out.loss, {"images": batch["has_image"].float().sum()}

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        patches = 0
        if "pixel_values" in batch and self.context is not None:
            patches = int(batch["has_image"].sum()) * int(self.context.model.num_patches)
        return int(batch["attention_mask"].sum()) + patches
