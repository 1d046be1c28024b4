"""Session fixtures of moxin-plugin-lmeval's tests: a small model trained briefly on the embedded
corpus's arithmetic (so that its choices on the ``tiny`` tasks carry signal, not ties), its HF
folder and GGUF exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def _config(vocab_size: int = 512):
    from transformers import MistralConfig

    # hidden 256: every matrix fits K-quant and q8_0 blocks
    return MistralConfig(vocab_size=vocab_size, hidden_size=256, intermediate_size=896,
                         num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=512, sliding_window=512,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM

    from moxin_core.api import ensure_embedded_tokenizer, iter_corpus, load_tokenizer, save_model

    tokenizer_dir = ensure_embedded_tokenizer(tmp_path_factory.mktemp("lmeval-tok") / "tok", 512)
    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config())
    ids: list[int] = []
    for record in iter_corpus(seed=0, num_documents=3000, mix={"arithmetic": 1.0}):
        ids += [tokenizer.bos_token_id] + tokenizer.encode(record["text"],
                                                           add_special_tokens=False)
    data = torch.tensor(ids[: len(ids) // 64 * 64]).view(-1, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        batch = data[torch.randint(len(data), (16,), generator=generator)]
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return save_model(model.eval(), tokenizer, tmp_path_factory.mktemp("lmeval-hf") / "hf",
                      tokenizer_dir)


@pytest.fixture(scope="session")
def gguf(tmp_path_factory, hf_folder):
    """``gguf(outtype)``: the GGUF export of ``hf_folder`` (once per type)."""
    from moxin_core.api import Registry

    exporter = Registry().get("exporters", "gguf")()
    out = tmp_path_factory.mktemp("lmeval-gguf")
    cache: dict[str, Path] = {}

    def get(outtype: str) -> Path:
        if outtype not in cache:
            cache[outtype] = Path(exporter(str(hf_folder), str(out / f"m.{outtype}.gguf"),
                                           outtype=outtype))
        return cache[outtype]
    return get
