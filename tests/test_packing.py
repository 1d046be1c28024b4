"""Tokenise-and-pack: no token lost or duplicated, position ids per document."""

from __future__ import annotations

import pytest
import torch

from moxin_core.corpus import iter_corpus
from moxin_core.data.packing import DocumentPacker, document_position_ids, pack_documents
from moxin_core.errors import MoxinError
from moxin_core.objectives.lm import IGNORE_INDEX, CausalLM
from moxin_core.tokenizer import load_tokenizer

BOS, EOS = 1, 2


def _split_documents(stream: list[int]) -> list[list[int]]:
    docs, current = [], None
    for token in stream:
        if token == BOS:
            assert current is None, "BOS inside a document"
            current = []
        elif token == EOS:
            docs.append(current)
            current = None
        else:
            current.append(token)
    assert current is None
    return docs


@pytest.mark.parametrize("seq_len", [2, 7, 64])
def test_reassembling_blocks_gives_back_every_document(seq_len):
    generator = torch.Generator().manual_seed(seq_len)
    documents = [torch.randint(3, 500, (int(n),), generator=generator).tolist()
                 for n in torch.randint(0, 150, (200,), generator=generator)]
    packer = DocumentPacker(seq_len, BOS, EOS)
    blocks = [block for doc in documents for block in packer.add(doc)]
    assert all(len(block) == seq_len for block in blocks)
    stream = [t for block in blocks for t in block] + packer.buffer
    assert _split_documents(stream) == documents
    assert len(packer.buffer) < seq_len
    assert list(pack_documents(documents, seq_len, BOS, EOS)) == blocks


def test_packing_efficiency_on_embedded_corpus(nano_tokenizer):
    tokenizer = load_tokenizer(nano_tokenizer)
    packer = DocumentPacker(128, tokenizer.bos_token_id, tokenizer.eos_token_id)
    for record in iter_corpus(seed=0, num_documents=2000):
        packer.add(tokenizer(record["text"], add_special_tokens=False)["input_ids"])
    assert packer.efficiency >= 0.99


def test_position_ids_restart_per_document_and_per_row():
    ids = torch.tensor([[5, 6, BOS, 7, 8, 9, BOS, 4],
                        [BOS, 3, 3, EOS, BOS, 3, 3, 3]])
    assert document_position_ids(ids, BOS).tolist() == [[0, 1, 0, 1, 2, 3, 0, 1],
                                                        [0, 1, 2, 3, 0, 1, 2, 3]]


def test_packed_position_ids_limit_attention_to_each_document(registry):
    """With packed position ids, a token's logits do not depend on other documents."""
    from moxin_core.models import resolve_model

    torch.manual_seed(0)
    ref = resolve_model(registry, "moxin-nano")
    model = ref.family.build(ref.preset.config).eval()
    doc_a, doc_b, doc_b2 = [BOS, 10, 11, 12], [BOS, 20, 21, 22, 23], [BOS, 30, 31]
    with torch.no_grad():
        def logits(ids):
            t = torch.tensor([ids])
            return model(input_ids=t, position_ids=document_position_ids(t, BOS),
                         use_cache=False).logits[0]
        packed = logits(doc_a + doc_b)
        alone = logits(doc_b)
        other = logits(doc_b2 + doc_b)
    torch.testing.assert_close(packed[len(doc_a):], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other[len(doc_b2):], alone, atol=1e-5, rtol=1e-5)


def test_lm_collate_masks_document_starts(nano_tokenizer):
    objective = CausalLM()
    objective.example_builder(load_tokenizer(nano_tokenizer), 8)
    batch = objective.collate([{"input_ids": [5, BOS, 6, 7, EOS, BOS, 8, 9]}])
    assert batch["labels"].tolist() == [[5, IGNORE_INDEX, 6, 7, EOS, IGNORE_INDEX, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 0, 1, 2, 3, 0, 1, 2]]


def test_lm_reports_missing_text_field(nano_tokenizer):
    builder = CausalLM(text_field="body").example_builder(load_tokenizer(nano_tokenizer), 16)
    with pytest.raises(MoxinError, match=r"f.jsonl:4: no field 'body' \(fields present: text, id\)"):
        builder.feed({"text": "x", "id": 1, "__origin__": "f.jsonl:4"})


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_chunked_logits_give_the_same_loss_and_gradients_without_the_full_logits(
        registry, nano_tokenizer, precision):
    from torch.utils._python_dispatch import TorchDispatchMode

    from moxin_core.models import resolve_model
    from moxin_core.testing import objective_batch

    ref = resolve_model(registry, "moxin-nano")
    tokenizer = load_tokenizer(nano_tokenizer)
    records = [{"text": f"Mia has {i} apples and buys {i + 3} more."} for i in range(60)]
    batch = objective_batch(CausalLM(), tokenizer, records, seq_len=48, size=3)
    vocab = ref.preset.config.vocab_size

    hidden = ref.preset.config.hidden_size

    class Largest(TorchDispatchMode):
        """The most token rows of logits (a tensor ``(..., vocab)``) any operation makes."""

        def __init__(self):
            super().__init__()
            self.numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == vocab:
                    rows = t.numel() // vocab
                    if rows != hidden:  # not the (transposed) output projection's weight
                        self.numel = max(self.numel, rows)
            return out

    results = {}
    for chunk in (0, 16):
        torch.manual_seed(0)
        model = ref.family.build(ref.preset.config).train()
        objective = CausalLM(logits_chunk=chunk)
        with Largest() as largest, torch.autocast("cpu", torch.bfloat16,
                                                  enabled=precision == "bf16-mixed"):
            loss, _ = objective.loss(model, batch)
            loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[chunk] = loss.detach(), grads, largest.numel
    (full, full_grads, full_numel), (chunked, grads, numel) = results[0], results[16]
    tolerance = 1e-5 if precision == "32-true" else 2e-2
    torch.testing.assert_close(chunked, full, atol=tolerance, rtol=tolerance)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], atol=tolerance, rtol=tolerance,
                                   msg=name)
    tokens = batch["input_ids"].numel()
    assert full_numel == tokens  # the unchunked loss holds the whole logits
    assert numel == 16, numel  # chunked: never more than 16 tokens' logits at a time


def test_logits_chunk_is_checked(registry):
    from moxin_core.models import resolve_model

    with pytest.raises(MoxinError, match="logits_chunk must be a whole number"):
        CausalLM(logits_chunk=-1)
    ref = resolve_model(registry, "moxin-nano")
    model = ref.family.build(ref.preset.config)
    model.config.logit_scale = 0.5  # a model that scales its logits (Cohere's way)
    ids = torch.randint(3, 100, (1, 8))
    with pytest.raises(MoxinError, match="no bias, scaling or soft-capping"):
        CausalLM(logits_chunk=4).loss(model, {"input_ids": ids, "labels": ids,
                                              "position_ids": torch.arange(8)[None]})


def test_the_attention_kernel_is_chosen_by_device():
    from moxin_core.module import choose_attention

    assert choose_attention("auto", "cuda") == "flex_attention"  # a document block mask
    assert choose_attention("auto", "cpu") is None  # the model's SDPA
    assert choose_attention("eager", "cpu") == "eager"
    with pytest.raises(MoxinError, match="no backward pass for flex attention"):
        choose_attention("flex_attention", "cpu")
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(MoxinError, match="needs the flash-attn package"):
            choose_attention("flash_attention_2", "cuda")


@pytest.mark.slow
def test_flex_attention_gives_the_packed_sdpa_logits_and_keeps_documents_apart(registry):
    """Forward only: PyTorch has no flex-attention backward on the CPU (a GPU run checks
    training); the first call compiles the kernel (~20 s here)."""
    from moxin_core.models import resolve_model
    from moxin_core.module import set_attention

    torch.manual_seed(0)
    ref = resolve_model(registry, "moxin-nano")
    model = ref.family.build(ref.preset.config).eval()
    ids = torch.randint(3, 500, (2, 64))
    ids[:, 0] = ids[:, 20] = ids[:, 50] = BOS
    position_ids = document_position_ids(ids, BOS)
    with torch.no_grad():
        sdpa = model(input_ids=ids, position_ids=position_ids, use_cache=False).logits
        set_attention(model, "flex_attention")
        flex = model(input_ids=ids, position_ids=position_ids, use_cache=False).logits
        alone = model(input_ids=ids[:, 20:50], position_ids=position_ids[:, 20:50],
                      use_cache=False).logits
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex[:, 20:50], alone, atol=1e-5, rtol=1e-5)
