"""Session fixtures of moxin-plugin-gguf's tests: one small trained model and its GGUF exports.

One small Mistral model (hidden 256, so that K-quants' 256-wide super-blocks fit every matrix)
is built once per session and trained for 15 steps on the embedded corpus. Why train: random
weights give nearly flat next-token distributions where any rounding flips the arg-max (q8_0
top-1 was 93 % on a random model with a x20 lm_head, 100 % after these 15 steps), so the top-1
checks would measure noise instead of the export.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def _test_config(vocab_size: int = 512):
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab_size, hidden_size=256, intermediate_size=896,
                         num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=1024, sliding_window=128,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from moxin_core.training.blocks import ensure_embedded_tokenizer

    return ensure_embedded_tokenizer(tmp_path_factory.mktemp("gguf-tok") / "tok", 512)


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory, tokenizer_dir) -> Path:
    from moxin_core.export import save_model
    from moxin_core.tokenizer import load_tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_test_config())
    _train_briefly(model, tokenizer)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("gguf-hf") / "hf",
                          tokenizer_dir)


def _train_briefly(model, tokenizer, steps: int = 15) -> None:
    """A few AdamW steps (batch 8 x 32 tokens): enough to give the logits a shape."""
    from moxin_core.corpus import iter_corpus

    ids: list[int] = []
    for record in iter_corpus(seed=0, num_documents=100):
        ids += [tokenizer.bos_token_id] + tokenizer.encode(record["text"], add_special_tokens=False)
    data = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = data[torch.randint(len(data), (8,), generator=generator)]
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.fixture(scope="session")
def exports(tmp_path_factory, hf_folder):
    """``exports(outtype)``: the verified GGUF of ``hf_folder`` (built once per type)."""
    from moxin_plugin_gguf.export import export_gguf

    out_dir = tmp_path_factory.mktemp("gguf-out")
    cache: dict[str, Path] = {}

    def get(outtype: str) -> Path:
        if outtype not in cache:
            cache[outtype] = export_gguf(hf_folder, out_dir / f"model.{outtype}.gguf",
                                         outtype=outtype)
        return cache[outtype]

    return get


@pytest.fixture(scope="session")
def moxin_cli() -> Callable[..., subprocess.CompletedProcess]:
    """``moxin_cli(*args)``: ``python -m moxin_core.cli ARGS``, what the ``moxin`` script runs."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moxin_core.cli", *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=timeout)

    return run
