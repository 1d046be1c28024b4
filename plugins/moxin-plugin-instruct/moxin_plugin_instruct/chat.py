"""Conversations: validation, rendering with the chat template, and assistant-only labels.

A conversation is rendered once with the tokenizer's chat template and tokenised once (with
character offsets), so the training ids are exactly the ids the same text gets at inference. The
character span of every assistant reply (its content and the closing ``<|endoftext|>``) is found by
rendering the conversation's prefixes; a token carries a label when it overlaps such a span. A
token that straddles the boundary (a ``"\\n}"`` piece merging the newline after ``<|assistant|>``
with the reply's first character) is labelled, since it holds reply text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moxin_core.data.sources import ORIGIN
from moxin_core.errors import MoxinError
from moxin_core.runtime import check_messages

Message = dict[str, str]


def origin_of(record: dict) -> str:
    return str(record.get(ORIGIN, "a record"))


def check_conversation(messages: Any, where: str, need_assistant: bool = True) -> list[Message]:
    """``moxin_core.runtime.check_messages`` (roles, contents; errors name ``where`` and the
    turn), and for training data at least one assistant turn."""
    clean = check_messages(messages, where)
    if need_assistant and not any(m["role"] == "assistant" for m in clean):
        raise MoxinError(f"{where}: the conversation has no assistant turn, so nothing would be "
                         "learned from it. Remove it or add the reply.")
    return clean


def pad_token_id(tokenizer: Any) -> int:
    """The id batches are padded with: the tokenizer's pad token, else EOS (never trained on)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def render(tokenizer: Any, messages: Sequence[Message], train_on: str = "all",
           add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and a per-token "is a trained assistant token" mask.

    ``train_on``: ``"all"`` assistant replies (SFT) or only the ``"last"`` one (a preference
    completion).
    """
    if tokenizer.chat_template is None:
        raise MoxinError("The tokenizer has no chat template; SFT and DPO need one (the Moxin "
                         "tokenizer folders carry it).")
    text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    spans = []
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last":
        replies = replies[-1:]
    for i in replies:
        prefix = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False,
                                               add_generation_prompt=True)
        through = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not (text.startswith(prefix) and text.startswith(through)):
            raise MoxinError("The chat template does not render conversations prefix by prefix; "
                             "assistant spans cannot be located.")
        spans.append((len(prefix), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    mask = [any(end > lo and start < hi for lo, hi in spans) for start, end in offsets]
    return ids, mask
