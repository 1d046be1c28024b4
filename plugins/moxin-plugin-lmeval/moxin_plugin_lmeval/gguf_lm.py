"""lm-eval scoring of GGUF files by llama.cpp itself (llama-cpp-python), loglikelihood and
generation tasks both.

Requests are tokenised by the file's own vocabulary the way lm-eval's ``HFLM`` tokenises them
(BOS first; a context's trailing spaces move to the continuation; the continuation is what the
whole string adds to the context's tokens), so a GGUF file and the HF folder it came from are
asked the same questions token for token. Each request's log-likelihood is the sum of the
continuation tokens' log-softmax over llama.cpp's logits (all positions kept); consecutive
requests that share a prefix (the choices of one question) reuse its KV cache. Greedy
generation runs llama.cpp's sampler at temperature 0 and stops at the task's ``until`` strings.
The KV cache is f32 so that an f32 file scores as the HF model does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from moxin_core.api import MoxinError

#: the largest context allocated (tokens); lm-eval's default max length is 2048
MAX_CONTEXT = 4096
GGML_TYPE_F32 = 0
GGUF_MAGIC = b"GGUF"


def check_gguf(path: Path) -> None:
    if not path.is_file():
        raise MoxinError(f"GGUF file {str(path)!r} does not exist. Export one with `moxin export "
                         f"MODEL --format gguf --out {path}`.")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise MoxinError(f"{str(path)!r} is not a GGUF file (no GGUF magic); export the "
                             "model with `moxin export MODEL --format gguf`.")


def context_length(path: Path) -> int | None:
    """The training context the file records (``<architecture>.context_length``)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # gguf-py raises several types on truncated files
        raise MoxinError(f"{str(path)!r} has a GGUF magic but its header cannot be read "
                         f"({type(exc).__name__}: {exc}); export it again.") from None
    fields = reader.fields
    architecture = fields["general.architecture"].contents() \
        if "general.architecture" in fields else None
    key = f"{architecture}.context_length"
    return int(fields[key].contents()) if key in fields else None


class GGUFLM(TemplateLM):
    """An lm-eval model over a GGUF file, run by llama.cpp."""

    def __init__(self, path: str | Path, max_length: int | None = None,
                 n_threads: int | None = None) -> None:
        super().__init__()
        from llama_cpp import Llama

        self.path = Path(path).expanduser()
        check_gguf(self.path)
        try:
            trained = context_length(self.path)
            self._max_length = min(max_length or trained or MAX_CONTEXT, MAX_CONTEXT)
            self.llama = Llama(model_path=str(self.path), n_ctx=self._max_length,
                               n_batch=min(512, self._max_length), logits_all=True,
                               n_threads=n_threads or max(1, (os.cpu_count() or 2)),
                               type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False)
        except ValueError as exc:
            raise MoxinError(f"llama.cpp could not load {str(self.path)!r} ({exc}); export it "
                             "again with `moxin export MODEL --format gguf`.") from None
        self._previous: list[int] = []

    # -- what TemplateLM needs
    @property
    def eot_token_id(self) -> int:
        return int(self.llama.token_eos())

    @property
    def prefix_token_id(self) -> int:
        return int(self.llama.token_bos())

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs: Any) -> list[int]:
        add_bos = True if add_special_tokens is None else bool(add_special_tokens)
        return list(self.llama.tokenize(string.encode("utf-8"), add_bos=add_bos, special=False))

    def _evaluate(self, tokens: list[int]) -> np.ndarray:
        """Logits at every position of ``tokens`` (one row per token), reusing the KV cache of
        the longest prefix shared with the previous call."""
        shared = 0
        for a, b in zip(self._previous, tokens[:-1]):
            if a != b:
                break
            shared += 1
        self.llama.n_tokens = shared  # eval() drops the cache beyond this point
        self.llama.eval(tokens[shared:])
        self._previous = list(tokens)
        return self.llama.scores[: len(tokens)]

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        # requests of one context (a question's choices) together: its KV cache is reused
        order = sorted(range(len(requests)),
                       key=lambda i: (tuple(requests[i][1]), len(requests[i][2])))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for i in tqdm(order, disable=disable_tqdm, desc="llama.cpp loglikelihood"):
            _, context, continuation = requests[i]
            if not continuation:  # nothing to score (as lm-eval's HFLM answers)
                results[i] = (0.0, True)
                continue
            whole = (context + continuation)[-(self.max_length + 1):]
            inputs = whole[:-1]
            scored = min(len(continuation), len(inputs))  # a continuation longer than the window
            logits = self._evaluate(inputs)[-scored:].astype(np.float64)
            logits -= logits.max(axis=-1, keepdims=True)
            logprobs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
            targets = np.asarray(continuation[-scored:], dtype=np.int64)
            total = float(logprobs[np.arange(len(targets)), targets].sum())
            greedy = bool((logprobs.argmax(axis=-1) == targets).all())
            results[i] = (total, greedy)
            self.cache_hook.add_partial("loglikelihood", requests[i][0], (total, greedy))
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="llama.cpp rolling"):
            (text,) = request.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text, add_special_tokens=False),
                prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            scored = self._loglikelihood_tokens([(None, c, t) for c, t in windows],
                                                disable_tqdm=True)
            out.append(sum(s for s, _ in scored))
        return out

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="llama.cpp generate"):
            context, options = request.args
            options = dict(options or {})
            until = options.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(options.pop("max_gen_toks", options.pop("max_new_tokens", 256)))
            temperature = float(options.pop("temperature", 0.0) or 0.0)
            if not options.pop("do_sample", False):
                temperature = 0.0
            # the prompt keeps at least half the window; generation gets the rest, at most what
            # the task asks for (a task asking for more than the window is cut to fit)
            prompt = self.tok_encode(context)
            prompt = prompt[-(self.max_length - min(max_new, self.max_length // 2)):]
            max_new = min(max_new, self.max_length - len(prompt))
            self._previous = []  # generation manages the cache itself
            self.llama.reset()
            completion = self.llama.create_completion(
                prompt, max_tokens=max_new, temperature=temperature, stop=until or None,
                seed=42)
            text = completion["choices"][0]["text"]
            for stop in until:  # llama.cpp stops at them; cut as lm-eval's HFLM does
                text = text.split(stop)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, {"until": until}), text)
        return out
