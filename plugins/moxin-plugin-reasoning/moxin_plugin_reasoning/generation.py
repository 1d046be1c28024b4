"""The generation seam of GRPO: prompts in, ``G`` sampled completions per prompt out.

The objective calls ``generator.generate(model, prompts, params)`` once per rollout and never
looks inside. Two generators ship:

* ``transformers`` (default): ``model.generate`` on the policy being trained, batched over every
  prompt and sample, left-padded, with the KV cache; sampling is seeded per rollout (the RNG is
  forked, so the run's own RNG streams are untouched and a resumed run samples exactly as an
  uninterrupted one);
* ``vllm``: a colocated ``vllm.LLM`` on the same GPU, refreshed with the policy's weights before
  each rollout. Only where vLLM and a CUDA GPU exist (``pip install moxin-plugin-reasoning[vllm]``);
  elsewhere asking for it is a clear error.

A third generator is any ``"package.module:factory"`` whose ``factory(**options)`` returns an
object with the same ``generate`` method (objective option ``generator``).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from moxin_core.api import MoxinError


def pad_id(tokenizer: Any) -> int:
    """The id prompts are padded with: the tokenizer's pad token, else EOS (never scored)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``num_generations`` completions per prompt, at most ``max_new_tokens``
    tokens each, ending at a ``stop_ids`` token (kept as the completion's last token).
    ``temperature`` 0: greedy."""

    num_generations: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    seed: int = 0


@dataclass
class Completions:
    """``ids[i * G + j]``: sample ``j`` of prompt ``i`` (stop token included when it stopped);
    ``truncated``: it hit ``max_new_tokens`` without a stop token; ``seconds``: wall time."""

    ids: list[list[int]]
    truncated: list[bool]
    seconds: float


class Generator(Protocol):
    def generate(self, model: torch.nn.Module, prompts: list[list[int]],
                 params: SamplingParams) -> Completions: ...


def cut_at_stop(rows: torch.Tensor, stop_ids: tuple[int, ...]) -> tuple[list[list[int]], list[bool]]:
    """Each row up to and including its first stop token; whether it never stopped."""
    ids, truncated = [], []
    stop = torch.isin(rows, torch.tensor(stop_ids, device=rows.device)) if stop_ids else \
        torch.zeros_like(rows, dtype=torch.bool)
    for row, hits in zip(rows.tolist(), stop.tolist()):
        end = hits.index(True) + 1 if True in hits else len(row)
        ids.append(row[:end])
        truncated.append(True not in hits)
    return ids, truncated


class TransformersGenerator:
    """Sampling (or greedy decoding) through ``model.generate`` (see the module docstring)."""

    def generate(self, model: torch.nn.Module, prompts: list[list[int]],
                 params: SamplingParams) -> Completions:
        started = time.perf_counter()
        device = next(model.parameters()).device
        width = max(map(len, prompts))
        input_ids = torch.tensor([[params.pad_id] * (width - len(p)) + p for p in prompts],
                                 device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                                 device=device)
        was_training = model.training
        model.eval()
        devices = [device] if device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(params.seed)
                sampling = ({"do_sample": True, "temperature": params.temperature,
                             "top_p": params.top_p, "top_k": params.top_k}
                            if params.temperature > 0 else
                            {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
                out = model.generate(
                    input_ids=input_ids, attention_mask=attention, **sampling,
                    max_new_tokens=params.max_new_tokens,
                    num_return_sequences=params.num_generations,
                    eos_token_id=list(params.stop_ids) or None, pad_token_id=params.pad_id,
                    use_cache=True)
        finally:
            model.train(was_training)
        ids, truncated = cut_at_stop(out[:, width:], params.stop_ids)
        return Completions(ids, truncated, time.perf_counter() - started)


class VLLMGenerator:
    """Sampling through a colocated ``vllm.LLM`` (GPU only; see the module docstring).

    Args:
        model_path: the folder vLLM first loads (the stage's starting model); the policy's
            current weights are copied in before every rollout.
        gpu_memory_utilization: the share of GPU memory vLLM may take beside training.
        dtype: vLLM's compute dtype.
    """

    def __init__(self, model_path: str | None = None, gpu_memory_utilization: float = 0.3,
                 dtype: str = "bfloat16") -> None:
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise MoxinError("generator 'vllm' needs vLLM and a CUDA GPU: pip install "
                             "'moxin-plugin-reasoning[vllm]', or use generator 'transformers'."
                             ) from None
        if not torch.cuda.is_available():
            raise MoxinError("generator 'vllm' needs a CUDA GPU; use generator 'transformers'.")
        self.model_path, self.memory, self.dtype = model_path, gpu_memory_utilization, dtype
        self.llm: Any = None

    def _engine(self, model: torch.nn.Module) -> Any:
        if self.llm is None:
            from vllm import LLM

            path = self.model_path or getattr(model.config, "_name_or_path", None)
            if not path:
                raise MoxinError("generator 'vllm' needs model_path: a folder with the "
                                 "starting model and tokenizer.")
            self.llm = LLM(model=str(path), gpu_memory_utilization=self.memory,
                           dtype=self.dtype, enable_prefix_caching=True)
        return self.llm

    def generate(self, model: torch.nn.Module, prompts: list[list[int]],
                 params: SamplingParams) -> Completions:
        from vllm import SamplingParams as VSampling

        started = time.perf_counter()
        llm = self._engine(model)
        worker_model = llm.llm_engine.model_executor.driver_worker.model_runner.model
        with torch.no_grad():
            worker_model.load_weights(
                (name, param.detach().full_tensor() if hasattr(param, "full_tensor") else param)
                for name, param in model.state_dict().items())
        sampling = VSampling(n=params.num_generations, temperature=params.temperature,
                             top_p=params.top_p, top_k=params.top_k or -1,
                             max_tokens=params.max_new_tokens, seed=params.seed,
                             stop_token_ids=list(params.stop_ids))
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], sampling,
                               use_tqdm=False)
        ids, truncated = [], []
        for output in outputs:
            for sample in output.outputs:
                ids.append(list(sample.token_ids))
                truncated.append(sample.finish_reason == "length")
        return Completions(ids, truncated, time.perf_counter() - started)


GENERATORS = {"transformers": TransformersGenerator, "vllm": VLLMGenerator}


def build_generator(spec: str, options: dict | None = None) -> Generator:
    """A generator by name (``transformers``, ``vllm``) or ``"package.module:factory"``."""
    options = dict(options or {})
    if spec in GENERATORS:
        return GENERATORS[spec](**options)
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise MoxinError(f"grpo: unknown generator {spec!r}: use one of "
                         f"{', '.join(GENERATORS)} or 'package.module:factory'.")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise MoxinError(f"grpo: cannot load generator {spec!r} ({exc}).") from None
    return factory(**options)
