"""The ``vlm`` runtime: ``moxin generate/chat VLM_FOLDER --image FILE``.

Accepts a VLM folder (``vlm.json``) or a stage folder whose ``hf/`` is one. ``complete`` puts the
picture's patches after BOS and continues the raw prompt; ``chat`` renders the conversation with
the chat template (the picture belongs to the conversation, as in training, where the first user
turn carries it) and answers it. Without an image a VLM answers from text alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from moxin_core.api import (MoxinError, Runtime, check_messages, generation_options, load_model,
                            reply_stop_ids)

from moxin_plugin_vlm.family import CONFIG_FILE
from moxin_plugin_vlm.objective import load_image


class VLMRuntime(Runtime):
    name = "vlm"
    takes_images = True

    @classmethod
    def accepts(cls, model: str) -> bool:
        path = Path(model).expanduser()
        return any((folder / CONFIG_FILE).is_file() for folder in (path, path / "hf"))

    def __init__(self, model: str) -> None:
        self.model, self.processor, _ = load_model(model)
        self.tokenizer = self.processor.tokenizer

    def _pixels(self, image: Any) -> torch.Tensor | None:
        if image is None:
            return None
        return self.processor.image(load_image(image, "--image"))[None]

    def _generate(self, ids: list[int], image: Any, max_new_tokens: int, temperature: float,
                  stop_ids: Sequence[int] = ()) -> str:
        tok = self.tokenizer
        if not ids or ids[0] != tok.bos_token_id:  # the patches go after BOS
            ids = [tok.bos_token_id, *ids]
        output = self.model.generate(torch.tensor([ids]), pixel_values=self._pixels(image),
                                     **generation_options(tok, max_new_tokens, temperature,
                                                          stop_ids))
        return tok.decode(output[0], skip_special_tokens=True)

    def complete(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                 image: Any = None) -> str:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return self._generate(ids, image, max_new_tokens, temperature)

    def chat(self, messages: Sequence[dict[str, str]], max_new_tokens: int = 256,
             temperature: float = 0.0, image: Any = None) -> str:
        messages = check_messages(messages)
        if self.tokenizer.chat_template is None:
            raise MoxinError("This VLM's tokenizer has no chat template; use `moxin generate` "
                             "without --chat.")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=True, return_dict=True)["input_ids"]
        return self._generate(list(ids), image, max_new_tokens, temperature,
                              reply_stop_ids(self.tokenizer)).strip()
