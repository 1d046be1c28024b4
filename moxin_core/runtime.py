"""Inference runtimes behind ``moxin generate`` and ``moxin chat``.

A runtime loads a trained model and produces text, either continuing a raw prompt (``complete``)
or answering a conversation rendered with the model's chat template (``chat``). The core ships the
``transformers`` runtime for HF folders, stage folders and hub ids; plugins register more through
the ``moxin_runtimes`` hook (``moxin-plugin-gguf`` adds ``llama.cpp`` for ``.gguf`` files).
``load_runtime`` picks the runtime for a path: the first plugin runtime that accepts it, else
``transformers``; ``generate`` and ``chat`` are what ``moxin generate`` and ``moxin chat`` run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moxin_core.errors import MoxinError
from moxin_core.tokenizer import reply_stop_ids

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


def generation_options(tokenizer: Any, max_new_tokens: int, temperature: float,
                       stop_ids: Sequence[int] = ()) -> dict[str, Any]:
    """``generate()`` keyword arguments of moxin's runtimes: greedy at temperature 0, else
    sampling at ``temperature`` with top-p 0.95; generation ends at EOS or any of ``stop_ids``
    (a chat turn's end marker), and pads with the first of them."""
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=0.95)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    eos = list(dict.fromkeys(i for i in (tokenizer.eos_token_id, *stop_ids) if i is not None))
    return {**kwargs, "eos_token_id": eos, "pad_token_id": eos[0]}


def check_messages(messages: Any, where: str = "conversation") -> list[Message]:
    """The turns as ``[{"role", "content"}]`` (other keys dropped), after checking that they form
    a non-empty list with roles system/user/assistant and string contents (clear errors naming
    ``where`` and the turn otherwise)."""
    if not isinstance(messages, (list, tuple)):
        raise MoxinError(f"{where}: `messages` must be a non-empty list of "
                         f"{{'role': ..., 'content': ...}} turns, got {type(messages).__name__}.")
    if not messages:
        raise MoxinError(f"{where}: no messages; `messages` must be a non-empty list of "
                         "{'role': ..., 'content': ...} turns.")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise MoxinError(f"{where}: message {i} must be {{'role': ..., 'content': ...}}, "
                             f"got {message!r}.")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise MoxinError(f"{where}: message {i} has unknown role {role!r}; the Moxin chat "
                             f"template knows {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise MoxinError(f"{where}: message {i} ({role}) content is "
                             f"{type(content).__name__}, expected a string.")
        clean.append({"role": role, "content": content})
    return clean


class Runtime(ABC):
    """A loaded model that generates text. Subclasses are registered by name.

    A runtime of a vision-language model sets ``takes_images = True``; its ``complete`` and
    ``chat`` then take ``image=`` (a path or a PIL image), which ``moxin generate/chat --image``
    passes. Other runtimes refuse an image with a clear error.
    """

    name = "runtime"
    takes_images: bool = False

    @classmethod
    @abstractmethod
    def accepts(cls, model: str) -> bool:
        """Whether this runtime can load ``model`` (a path or hub id)."""

    @abstractmethod
    def complete(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0) -> str:
        """Continue ``prompt`` (greedy when ``temperature`` is 0); returns only the new text."""

    @abstractmethod
    def chat(self, messages: Sequence[Message], max_new_tokens: int = 256,
             temperature: float = 0.0) -> str:
        """The assistant's reply to ``messages`` under the model's chat template."""


class TransformersRuntime(Runtime):
    """Causal-LM folders, stage folders and hub ids through ``transformers``' ``generate``."""

    name = "transformers"

    @classmethod
    def accepts(cls, model: str) -> bool:
        from moxin_core.models.family import DEFAULT_FAMILY, family_name_in

        if str(model).endswith(".gguf"):
            return False
        path = Path(model).expanduser()
        for folder in (path, path / "hf"):
            if folder.is_dir() and family_name_in(folder) not in (None, DEFAULT_FAMILY):
                return False  # another family's folder: its plugin's runtime loads it
        return True

    def __init__(self, model: str) -> None:
        import transformers

        from moxin_core.export import resolve_model_folder
        from moxin_core.models.causal_lm import CausalLMFamily

        transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar in a chat
        path = Path(model).expanduser()
        source = str(resolve_model_folder(path)) if path.exists() else str(model)
        family = CausalLMFamily()
        self.tokenizer = family.load_processor(source)
        self.model = family.load(source).eval()
        family.check(self.model, self.tokenizer, 0, f"model {model!r}")

    def _generate(self, ids: Any, max_new_tokens: int, temperature: float,
                  stop_ids: Sequence[int] = ()) -> str:
        """``stop_ids`` end generation besides EOS."""
        import torch

        options = generation_options(self.tokenizer, max_new_tokens, temperature, stop_ids)
        with torch.no_grad():
            output = self.model.generate(ids, attention_mask=torch.ones_like(ids), **options)
        return self.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)

    def complete(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0) -> str:
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        return self._generate(ids, max_new_tokens, temperature)

    def chat(self, messages: Sequence[Message], max_new_tokens: int = 256,
             temperature: float = 0.0) -> str:
        messages = check_messages(messages)
        if self.tokenizer.chat_template is None:
            raise MoxinError("This model's tokenizer has no chat template; use `moxin generate` "
                             "without --chat, or a tokenizer folder that carries one.")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)["input_ids"]
        return self._generate(ids, max_new_tokens, temperature,
                              reply_stop_ids(self.tokenizer)).strip()


def load_runtime(model: str, registry: Any = None, runtime: str | None = None) -> Runtime:
    """Load ``model`` with the runtime named ``runtime``, or the first one that accepts it."""
    if registry is None:
        from moxin_core.plugins import Registry

        registry = Registry()
    if runtime is not None:
        return registry.get("runtimes", runtime)(model)
    runtimes = registry.category("runtimes")
    ordered = sorted(runtimes.items(), key=lambda item: item[0] == TransformersRuntime.name)
    for _, factory in ordered:
        if factory.accepts(model):
            return factory(model)
    raise MoxinError(f"No runtime can load {model!r} (installed runtimes: "
                     f"{', '.join(runtimes)}). For .gguf files install moxin-plugin-gguf; a "
                     "model of another family needs the runtime of the plugin that defines it.")


def _check_generation(max_new_tokens: int, temperature: float) -> None:
    if max_new_tokens <= 0:
        raise MoxinError(f"--max-new-tokens must be positive, got {max_new_tokens}.")
    if temperature < 0:
        raise MoxinError(f"--temperature must be >= 0 (0 = greedy), got {temperature}.")


def _image_options(engine: Runtime, model: str, image: Any) -> dict[str, Any]:
    """``{"image": image}`` for a runtime that takes images; an error for one that does not."""
    if image is None:
        return {}
    if not engine.takes_images:
        raise MoxinError(f"{model} is a text model (runtime {engine.name}); --image needs a "
                         "vision-language model (moxin-plugin-vlm).")
    if isinstance(image, (str, Path)) and not Path(image).expanduser().is_file():
        raise MoxinError(f"--image {image}: no such file.")
    return {"image": image}


def generate(model: str, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
             chat: bool = False, runtime: str | None = None, registry: Any = None,
             image: Any = None) -> str:
    """Complete ``prompt`` (or answer it as a chat turn) with any model a runtime can load;
    ``image`` (a path) goes with the prompt to a vision-language model."""
    _check_generation(max_new_tokens, temperature)
    engine = load_runtime(model, registry, runtime)
    extra = _image_options(engine, model, image)
    if chat:
        return engine.chat([{"role": "user", "content": prompt}], max_new_tokens, temperature,
                           **extra)
    return engine.complete(prompt, max_new_tokens, temperature, **extra)


def chat(model: str, messages: Sequence[str] = (), system: str | None = None,
         max_new_tokens: int = 256, temperature: float = 0.0, runtime: str | None = None,
         stdin: Any = None, stdout: Any = None, registry: Any = None,
         image: Any = None) -> list[dict[str, str]]:
    """Talk to ``model`` under its chat template; returns the conversation.

    With ``messages`` each one is sent as a user turn in order and the replies are printed;
    without, turns are read from ``stdin`` (``/reset`` starts over, ``/exit`` or end of input
    stops). ``image`` (a path) is the picture the conversation is about (a vision-language
    model).
    """
    _check_generation(max_new_tokens, temperature)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    engine = load_runtime(model, registry, runtime)
    extra = _image_options(engine, model, image)
    start = [{"role": "system", "content": system}] if system else []
    conversation = list(start)
    interactive = not messages
    if interactive and stdin.isatty():
        print(f"Chatting with {model} ({engine.name}); /reset clears the history, /exit quits.",
              file=stdout)

    def turns():
        yield from messages
        while interactive:
            if stdin.isatty():
                print("you> ", end="", file=stdout, flush=True)
            line = stdin.readline()
            if not line:
                return
            yield line.rstrip("\n")

    for text in turns():
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            conversation = list(start)
            continue
        if not text.strip():
            continue
        conversation.append({"role": "user", "content": text})
        reply = engine.chat(conversation, max_new_tokens, temperature, **extra)
        conversation.append({"role": "assistant", "content": reply})
        print(f"assistant> {reply}" if interactive or len(messages) > 1 else reply, file=stdout,
              flush=True)
    return conversation
