"""Log-probabilities of chosen tokens, without a full log-softmax over the vocabulary.

``selective_log_softmax`` computes ``log_softmax(logits)[..., index]`` row by row: the full
``(batch, seq, vocab)`` log-softmax (as large as the logits) is never materialised, which matters
for a 32 k vocabulary at thousands of tokens (TRL's ``selective_log_softmax`` does the same).
``sequence_logps`` sums them over completion tokens, as DPO, GRPO and the evaluators need.
"""

from __future__ import annotations

import torch


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits, -1).gather(-1, index[..., None])[..., 0]``, memory-lean.

    Args:
        logits: ``(..., vocab)``.
        index: ``(...)`` token ids.

    Returns:
        ``(...)`` log-probabilities. fp32/fp64 logits: the selected logit minus a per-row
        ``logsumexp``, in their dtype; half-precision logits are upcast one row at a time (their
        own ``logsumexp`` is not accurate enough) and the result is fp32.
    """
    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)
        normaliser = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        return selected - normaliser
    rows = []
    for row_logits, row_index in zip(logits, index):
        row = torch.log_softmax(row_logits.float(), dim=-1)
        rows.append(torch.gather(row, -1, row_index.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows)


def sequence_logps(model: torch.nn.Module, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, completion_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of the completion tokens, and their count.

    Token ``t`` is predicted from the logits at ``t - 1``; only tokens with ``completion_mask``
    set count.

    Args:
        model: a causal LM returning ``.logits`` ``(batch, seq, vocab)``.
        input_ids, attention_mask, completion_mask: ``(batch, seq)``.

    Returns:
        ``(logps, counts)``: ``(batch,)`` fp32 sums over completion tokens and ``(batch,)``
        token counts.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    token_logps = selective_log_softmax(logits[:, :-1], input_ids[:, 1:]).float()
    mask = completion_mask[:, 1:].to(token_logps.dtype)
    return (token_logps * mask).sum(-1), mask.sum(-1)
