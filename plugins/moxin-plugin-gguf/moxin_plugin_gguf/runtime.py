"""``llama.cpp``: the runtime behind ``moxin generate model.gguf`` and ``moxin chat model.gguf``.

The file is checked before llama.cpp sees it (it exists, is a file, starts with the GGUF magic and
its header parses), so a wrong path gives a :class:`MoxinError` naming the file instead of a
llama.cpp load failure. The context is the file's training context, at most ``MAX_CONTEXT``
tokens (Moxin-7B's 32K context would cost GBs of KV cache for a chat turn).

Prompts are tokenised as transformers does: ``complete`` adds BOS and parses special-token
strings (``<|user|>``) into their ids; ``chat`` renders the conversation with the chat template
stored in the file (``tokenizer.chat_template``, rendered by llama-cpp-python's
``Jinja2ChatFormatter``: the same sandboxed Jinja environment settings as transformers, with the
vocabulary's BOS/EOS strings) and tokenises the result without adding another BOS, so llama.cpp
sees the ids ``apply_chat_template(..., add_generation_prompt=True)`` gives. Generation stops at
EOS and at ``<|endoftext|>`` (the end of an assistant turn in the Moxin template), neither of
which is returned.

Greedy decoding (``temperature=0``) uses llama.cpp's greedy sampler; an f32 file also gets an f32
KV cache, so its greedy output is the HF model's (an f16 cache would round keys and values).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moxin_core.api import END_OF_TURN, Message, MoxinError, Runtime, check_messages

#: the largest context the runtime allocates (tokens)
MAX_CONTEXT = 4096
#: the sampler's seed: sampled output (temperature > 0) is reproducible run to run
SEED = 42  # not 0: llama-cpp-python reads a seed of 0 as "random"
GGUF_MAGIC = b"GGUF"
GGML_TYPE_F32 = 0  # ggml_type of the KV cache for f32 files
LLAMA_FTYPE_ALL_F32 = 0  # general.file_type of an f32 file


@dataclass(frozen=True)
class GGUFHeader:
    """What the runtime reads from a GGUF file's metadata before llama.cpp loads it."""

    architecture: str
    context_length: int | None
    file_type: int | None
    chat_template: str | None


def read_header(path: Path) -> GGUFHeader:
    """Check that ``path`` is a readable GGUF file and read its header.

    Raises MoxinError (naming ``path`` and what to do) for a missing path, a folder, a file that
    is not GGUF (no magic) and a file whose header does not parse (truncated or corrupt).
    """
    if not path.exists():
        raise MoxinError(f"GGUF file {str(path)!r} does not exist. Export one with `moxin export "
                         f"MODEL --format gguf --out {path}`.")
    if path.is_dir():
        raise MoxinError(f"{str(path)!r} is a folder, not a GGUF file; give the .gguf file, or "
                         "drop the .gguf suffix to load an HF folder with transformers.")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise MoxinError(f"{str(path)!r} is not a GGUF file (it starts with {magic!r}, not "
                         f"{GGUF_MAGIC!r}). Export the model with `moxin export MODEL --format "
                         "gguf`, or pass an HF folder without the .gguf suffix.")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # gguf-py raises ValueError, IndexError, ... on truncated files
        raise MoxinError(f"{str(path)!r} has a GGUF magic but its header cannot be read "
                         f"({type(exc).__name__}: {exc}); the file is truncated or corrupt. "
                         "Export it again.") from None

    def field(key: str) -> Any:
        return reader.fields[key].contents() if key in reader.fields else None

    architecture = field("general.architecture")
    if not isinstance(architecture, str):
        raise MoxinError(f"{str(path)!r} has no general.architecture metadata: not a model GGUF "
                         "file (a vocabulary-only or LoRA file?).")
    context = field(f"{architecture}.context_length")
    file_type = field("general.file_type")
    template = field("tokenizer.chat_template")
    return GGUFHeader(architecture=architecture,
                      context_length=int(context) if context is not None else None,
                      file_type=int(file_type) if file_type is not None else None,
                      chat_template=template if isinstance(template, str) else None)


def default_threads() -> int:
    """The CPU cores this process may run on (its affinity mask), else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 4


class LlamaCppRuntime(Runtime):
    """``.gguf`` files through llama-cpp-python (``llama_cpp.Llama``)."""

    name = "llama.cpp"

    @classmethod
    def accepts(cls, model: str) -> bool:
        """Paths ending in ``.gguf`` (any case)."""
        return str(model).lower().endswith(".gguf")

    def __init__(self, model: str | Path, n_ctx: int | None = None,
                 n_threads: int | None = None) -> None:
        """Load the GGUF file ``model``.

        Args:
            model: path of a ``.gguf`` file.
            n_ctx: context size in tokens; default: the file's context length, at most
                ``MAX_CONTEXT``.
            n_threads: CPU threads; default: the cores this process may use.
        """
        try:
            from llama_cpp import Llama
        except ImportError:
            raise MoxinError("Running .gguf files needs llama-cpp-python (pip install "
                             "'llama-cpp-python>=0.3').") from None
        self.path = Path(model).expanduser()
        self.header = read_header(self.path)
        self.n_ctx = n_ctx or min(self.header.context_length or MAX_CONTEXT, MAX_CONTEXT)
        cache: dict[str, int] = {}
        if self.header.file_type == LLAMA_FTYPE_ALL_F32:
            cache = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32}
        try:
            # verbose=False also keeps llama.cpp's log at errors only for the process's lifetime
            self.llama = Llama(model_path=str(self.path), n_ctx=self.n_ctx,
                               n_threads=n_threads or default_threads(), seed=SEED,
                               verbose=False, **cache)
        except ValueError as exc:
            raise MoxinError(f"llama.cpp could not load {str(self.path)!r} ({exc}). The file may "
                             "come from a newer llama.cpp or be damaged; export it again with "
                             "`moxin export MODEL --format gguf`.") from None
        self.bos_id = self.llama.token_bos()
        self.eos_id = self.llama.token_eos()
        self.stop_ids = frozenset(i for i in (self.eos_id, self._single_token(END_OF_TURN))
                                  if i is not None and i >= 0)
        self._formatter: Any = None

    # ------------------------------------------------------------------------- tokens

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        """Token ids of ``text``; special-token strings (``<s>``, ``<|user|>``) become their ids."""
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (control tokens such as ``<s>`` are left out)."""
        return self.llama.detokenize(list(ids)).decode("utf-8", errors="replace")

    def _single_token(self, text: str) -> int | None:
        ids = self.tokenize(text, add_bos=False)
        return ids[0] if len(ids) == 1 else None

    def _token_text(self, token: int) -> str:
        return self.llama.detokenize([token], special=True).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------------- prompts

    def chat_prompt(self, messages: Sequence[Message]) -> str:
        """``messages`` rendered with the file's chat template, ending with the assistant cue."""
        check_messages(messages)
        if self._formatter is None:
            if self.header.chat_template is None:
                raise MoxinError(f"{str(self.path)!r} has no chat template "
                                 "(tokenizer.chat_template); use `moxin generate` without "
                                 "--chat, or export again from a folder whose tokenizer has one.")
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(
                self.header.chat_template, eos_token=self._token_text(self.eos_id),
                bos_token=self._token_text(self.bos_id), add_generation_prompt=True)
        try:
            return self._formatter(messages=[dict(m) for m in messages]).prompt
        except Exception as exc:  # raise_exception() in the template, or a template bug
            raise MoxinError(f"The chat template of {str(self.path)!r} failed on this "
                             f"conversation: {exc}") from None

    def chat_prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The ids llama.cpp is given for ``messages`` (the template writes BOS itself)."""
        return self.tokenize(self.chat_prompt(messages), add_bos=False)

    # ------------------------------------------------------------------------- generation

    def generate_ids(self, prompt_ids: Sequence[int], max_new_tokens: int,
                     temperature: float = 0.0, stop_ids: Collection[int] | None = None
                     ) -> list[int]:
        """New token ids after ``prompt_ids``.

        Args:
            prompt_ids: the full prompt, BOS included.
            max_new_tokens: at most this many ids; fewer when the context is full.
            temperature: 0 = greedy; otherwise sampling at this temperature with nucleus 0.95
                (as the transformers runtime does), seeded with ``SEED``.
            stop_ids: ids that end generation and are not returned; None: EOS and
                ``<|endoftext|>``; ``()``: always generate ``max_new_tokens`` (benchmarks).
        """
        room = self.n_ctx - len(prompt_ids)
        if room <= 0:
            raise MoxinError(f"The prompt is {len(prompt_ids)} tokens but the llama.cpp context of "
                             f"{str(self.path)!r} holds {self.n_ctx}; shorten the prompt (or "
                             "/reset the chat).")
        stops = self.stop_ids if stop_ids is None else frozenset(stop_ids)
        if temperature > 0:
            sampling = {"temp": temperature, "top_p": 0.95, "top_k": 0, "min_p": 0.0}
        else:
            sampling = {"temp": 0.0, "top_k": 1}
        new: list[int] = []
        budget = min(max_new_tokens, room)
        for token in self.llama.generate(list(prompt_ids), repeat_penalty=1.0, **sampling):
            if token in stops:
                break
            new.append(int(token))
            if len(new) >= budget:
                break
        return new

    def complete(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0) -> str:
        """Continue ``prompt`` (BOS added, as transformers does); returns only the new text."""
        ids = self.generate_ids(self.tokenize(prompt, add_bos=True), max_new_tokens, temperature)
        return self.detokenize(ids)

    def chat(self, messages: Sequence[Message], max_new_tokens: int = 256,
             temperature: float = 0.0) -> str:
        """The assistant's reply to ``messages`` under the file's chat template."""
        ids = self.generate_ids(self.chat_prompt_ids(messages), max_new_tokens, temperature)
        return self.detokenize(ids).strip()

    def close(self) -> None:
        """Free llama.cpp's model and context now (otherwise when garbage-collected)."""
        self.llama.close()
