"""Parity of a GGUF file with the HF model it came from: tokenisation and next-token logits.

Two checks, both against llama.cpp through llama-cpp-python:

* **tokenisation** — every probe text (ASCII prose, accents/CJK/emoji, code with tabs and runs of
  spaces, chat-formatted text with the role markers, characters only byte fallback can encode,
  leading/trailing spaces) must give the same ids with the HF tokenizer and with llama.cpp's
  vocabulary (``special=True``: marker strings become their ids, as in transformers);
* **logits** — the same token ids (BOS + the HF ids of each probe prompt) go through HF
  transformers in fp32 and through llama.cpp; every position's next-token logits are compared:
  the maximum absolute difference and the share of positions whose arg-max (top-1) agrees.

Sequences are cut to the model's sliding window: beyond it Mistral and llama.cpp's ``llama``
architecture attend differently (see ``writer``), which is not an export error.

Pass criteria (``THRESHOLDS``): f32 max |diff| <= 1e-3 and 100 % top-1; f16/bf16/q8_0 top-1 >=
95 %; K-quants are measured and reported but only their tokenisation is enforced (4-6 bit weights
move near-tied logits by design).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TOKENIZER_PROBES = (
    "The quick brown fox jumps over the lazy dog. In 2024, it cost $1,234.56 (about 7%).",
    "Café, naïve, façade, Straße, Ångström; 中文测试，你好世界；日本語のテキスト；emoji 🚀🎉👍🏽",
    "def add(a, b):\n\tif a  >  b:\n\t\treturn a    + b\n    return 0  # two  spaces\n",
    "<|system|>\nYou are terse.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n4<|endoftext|>\n<|user|>\nThanks",
    "Byte fallback: \u0f00 \U0001d11e \u2603 \u01c5 \U00010348 \x07 \u200b end",
    "   leading and trailing spaces   ",
    "line one\n\n\nline four\r\nwindows line\ttab",
    "<s>already has bos</s> and </s>",
)

LOGIT_PROMPTS = (
    "The quick brown fox jumps over the lazy dog, and then",
    "def fibonacci(n):\n\tif n < 2:\n\t\treturn n\n",
    "<|user|>\nWhat is 12 + 30?\n<|assistant|>\n",
    "Once upon a time, in a small village near the mountains, there lived an old",
)

THRESHOLDS: dict[str, dict[str, float]] = {
    "f32": {"max_abs_diff": 1e-3, "top1_agreement": 1.0},
    "f16": {"top1_agreement": 0.95},
    "bf16": {"top1_agreement": 0.95},
    "q8_0": {"top1_agreement": 0.95},
}

MAX_PROBE_TOKENS = 64
GGML_TYPE_F32 = 0  # keep llama.cpp's KV cache in f32 so that an f32 model is compared exactly


def compare_tokenization(folder: Path, gguf_path: Path,
                         probes: tuple[str, ...] = TOKENIZER_PROBES) -> dict[str, Any]:
    """``{"probes": n, "mismatches": [{"text", "hf", "llama_cpp"}, ...]}``."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    vocab = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    mismatches = []
    try:
        for text in probes:
            hf_ids = list(tokenizer.encode(text, add_special_tokens=False))
            cpp_ids = list(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))
            if hf_ids != cpp_ids:
                mismatches.append({"text": text, "hf": hf_ids, "llama_cpp": cpp_ids})
    finally:
        vocab.close()
    return {"probes": len(probes), "mismatches": mismatches}


def probe_token_ids(folder: Path, prompts: tuple[str, ...] = LOGIT_PROMPTS) -> list[list[int]]:
    """BOS + HF ids of each prompt, cut to the sliding window and ``MAX_PROBE_TOKENS``."""
    import json

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    limit = min(MAX_PROBE_TOKENS, config.get("sliding_window") or MAX_PROBE_TOKENS)
    return [([tokenizer.bos_token_id] + list(tokenizer.encode(p, add_special_tokens=False)))[:limit]
            for p in prompts]


def hf_logits(folder: Path, sequences: list[list[int]]) -> list[np.ndarray]:
    """fp32 transformers logits, one ``(len(ids), n_vocab)`` array per sequence."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 trust_remote_code=False)
    model.eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float().numpy() for ids in sequences]


def llama_cpp_logits(gguf_path: Path, sequences: list[list[int]],
                     threads: int | None = None) -> list[np.ndarray]:
    """llama.cpp logits for every position, one ``(len(ids), n_vocab)`` array per sequence."""
    import os

    from llama_cpp import Llama

    n_ctx = max(len(ids) for ids in sequences)
    llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32,
                n_threads=threads or os.cpu_count(), verbose=False)
    out = []
    try:
        for ids in sequences:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    finally:
        llm.close()
    return out


def compare_logits(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, Any]:
    """Max |reference - candidate| over all positions and logits; share of agreeing arg-maxes."""
    diffs = [float(np.max(np.abs(r - c))) for r, c in zip(reference, candidate)]
    agree = sum(int(np.sum(r.argmax(-1) == c.argmax(-1))) for r, c in zip(reference, candidate))
    positions = sum(r.shape[0] for r in reference)
    return {"max_abs_diff": max(diffs), "top1_agreement": agree / positions,
            "positions": positions, "max_abs_logit": float(max(np.abs(r).max() for r in reference))}


def failures(report: dict[str, Any], outtype: str) -> list[str]:
    """Why ``report`` fails ``THRESHOLDS[outtype]`` (empty list: it passes)."""
    problems = [f"tokenisation differs on {m['text']!r}: HF {m['hf']} vs llama.cpp {m['llama_cpp']}"
                for m in report["tokenization"]["mismatches"]]
    logits = report["logits"]
    limits = THRESHOLDS.get(outtype, {})
    if "max_abs_diff" in limits and logits["max_abs_diff"] > limits["max_abs_diff"]:
        problems.append(f"max |logit difference| {logits['max_abs_diff']:.3g} > "
                        f"{limits['max_abs_diff']:g}")
    if "top1_agreement" in limits and logits["top1_agreement"] < limits["top1_agreement"]:
        problems.append(f"top-1 agreement {logits['top1_agreement']:.1%} < "
                        f"{limits['top1_agreement']:.0%}")
    return problems


def verify_gguf(folder: Path, gguf_path: Path, outtype: str) -> dict[str, Any]:
    """Run both checks; returns the report (``passed`` and ``failures`` included)."""
    from moxin_plugin_gguf.quantize import quiet_llama_logs

    sequences = probe_token_ids(folder)
    reference = hf_logits(folder, sequences)
    with quiet_llama_logs():
        report: dict[str, Any] = {
            "outtype": outtype,
            "tokenization": compare_tokenization(folder, gguf_path),
            "logits": compare_logits(reference, llama_cpp_logits(gguf_path, sequences)),
            "thresholds": THRESHOLDS.get(outtype, {}),
        }
    report["failures"] = failures(report, outtype)
    report["passed"] = not report["failures"]
    return report
