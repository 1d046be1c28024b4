"""Conversations: validation, rendering with the chat template, and assistant-only labels.

A conversation is rendered and tokenised once by the tokenizer's chat template
(``apply_chat_template``), so the training ids are exactly the ids the same conversation gets at
inference. The Moxin template marks every assistant reply (its content and the closing
``<|endoftext|>``) with ``{% generation %}``, and transformers' ``return_assistant_tokens_mask``
labels exactly the tokens in those marks; a token that straddles the boundary (a ``"\\n}"`` piece
merging the newline after ``<|assistant|>`` with the reply's first character) is labelled, since
it holds reply text. A third-party template without the marks is handled by locating each reply's
characters through renderings of the conversation's prefixes, with the same result.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from moxin_core.api import ORIGIN, MoxinError, check_messages

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
    if GENERATION_MARK.search(tokenizer.chat_template):
        rendered = tokenizer.apply_chat_template(
            list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt)
        ids, mask = list(rendered["input_ids"]), [bool(m) for m in rendered["assistant_masks"]]
    else:
        ids, mask = _render_by_prefixes(tokenizer, messages, add_generation_prompt)
    if train_on == "last" and any(mask):
        # replies are separated by turn markers: the last run of labelled tokens is the last one
        start = max(i for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))
        mask = [m and i >= start for i, m in enumerate(mask)]
    return ids, mask


#: the chat-template tag that opens the trained part of an assistant turn
GENERATION_MARK = re.compile(r"{%-?\s*generation\s*-?%}")


def _render_by_prefixes(tokenizer: Any, messages: Sequence[Message],
                        add_generation_prompt: bool) -> tuple[list[int], list[bool]]:
    """For templates without generation marks: each reply's characters are found by rendering
    the conversation's prefixes; a token is labelled when it overlaps a reply."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    spans = []
    for i in (i for i, m in enumerate(messages) if m["role"] == "assistant"):
        prefix = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False,
                                               add_generation_prompt=True)
        through = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not (text.startswith(prefix) and text.startswith(through)):
            raise MoxinError("The chat template does not render conversations prefix by prefix; "
                             "assistant spans cannot be located. Mark the assistant replies with "
                             "{% generation %} ... {% endgeneration %} in the template.")
        spans.append((len(prefix), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    mask = [any(end > lo and start < hi for lo, hi in spans) for start, end in offsets]
    return ids, mask
