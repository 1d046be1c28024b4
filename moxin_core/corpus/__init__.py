"""Embedded default corpus: a deterministic, generated text mixture.

The project writes this text itself (nothing is copied from elsewhere), so a
fresh checkout can train a tiny SentencePiece tokenizer and pretrain a small
model on CPU without downloading anything.  Three kinds of documents:

* ``prose``      -- short paragraphs of simple, grammatical English built from
                    templates and word lists (about 5% carry a non-ASCII word,
                    CJK phrase or emoji so the tokenizer sees Unicode);
* ``arithmetic`` -- word problems with worked, checkable answers;
* ``code``       -- small, syntactically valid Python snippets.

Every document ``i`` is generated from its own ``random.Random`` seeded with a
string derived from ``(seed, i)``.  String seeds are hashed with SHA-512 by
``random`` (independent of ``PYTHONHASHSEED``), so the corpus is byte-identical
on every machine, and resuming at any index costs O(1).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator

from moxin_core.corpus.arithmetic import arithmetic_problem
from moxin_core.corpus.code import code_document
from moxin_core.corpus.prose import prose_document
from moxin_core.corpus.arithmetic import DAYS, ITEMS
from moxin_core.corpus.words import NAMES

KINDS: tuple[str, ...] = ("prose", "arithmetic", "code")
DEFAULT_MIX: dict[str, float] = {"prose": 0.5, "arithmetic": 0.3, "code": 0.2}

__all__ = ["DAYS", "DEFAULT_MIX", "ITEMS", "KINDS", "NAMES", "arithmetic_problem",
           "corpus_fingerprint", "generate_document", "iter_corpus"]


def generate_document(rng: random.Random, kind: str) -> str:
    """Generate one document of the given kind using only ``rng``."""
    if kind == "prose":
        return prose_document(rng)
    if kind == "arithmetic":
        problem = arithmetic_problem(rng)
        return f"Question: {problem['question']}\nAnswer: {problem['solution']}"
    if kind == "code":
        return code_document(rng)
    raise ValueError(f"unknown document kind {kind!r}; expected one of {KINDS}")


def _check_mix(mix: dict[str, float] | None) -> list[tuple[str, float]]:
    """Validate a mix and return (kind, weight) pairs in fixed KINDS order."""
    mix = DEFAULT_MIX if mix is None else mix
    for kind, weight in mix.items():
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} in mix; expected a subset of {KINDS}")
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight for {kind!r} must be a finite number >= 0, got {weight!r}")
    # Fixed order (KINDS), not dict order, so equal mixes give equal corpora.
    weights = [(kind, float(mix[kind])) for kind in KINDS if mix.get(kind, 0) > 0]
    if not weights:
        raise ValueError("mix weights are all zero; at least one kind needs a positive weight")
    return weights


def _choose_kind(rng: random.Random, weights: list[tuple[str, float]]) -> str:
    """Pick a kind with probability proportional to its weight (one rng.random() draw)."""
    point = rng.random() * sum(w for _, w in weights)
    for kind, weight in weights:
        point -= weight
        if point < 0:
            return kind
    return weights[-1][0]  # guard against float rounding at the upper edge


def iter_corpus(seed: int = 0, num_documents: int = 2000, mix: dict[str, float] | None = None,
                start: int = 0, step: int = 1) -> Iterator[dict]:
    """Yield {"text", "kind", "id"} for document ids start, start + step, ... < num_documents.

    Document i depends only on (seed, i, mix): it gets a fresh
    ``random.Random(f"moxin-corpus:{seed}:{i}")``, picks its kind from the mix
    with that rng, then generates.  So ``start=k`` gives exactly the documents
    that skipping the first k would, without generating them (and ``step`` picks one document
    in ``step`` the same way).
    """
    if num_documents < 0:
        raise ValueError(f"num_documents must be >= 0, got {num_documents}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    weights = _check_mix(mix)  # validated here, eagerly, not on the first next()
    return _generate(seed, num_documents, weights, start, step)


def _generate(seed: int, num_documents: int, weights: list[tuple[str, float]],
              start: int, step: int) -> Iterator[dict]:
    for i in range(start, num_documents, step):
        rng = random.Random(f"moxin-corpus:{seed}:{i}")
        kind = _choose_kind(rng, weights)
        yield {"text": generate_document(rng, kind), "kind": kind, "id": i}


def corpus_fingerprint(seed: int = 0, num_documents: int = 2000, mix=None) -> str:
    """SHA-256 hex digest of the UTF-8 texts of all documents joined by '\\x1e'."""
    digest = hashlib.sha256()
    for doc in iter_corpus(seed, num_documents, mix):
        if doc["id"]:
            digest.update(b"\x1e")
        digest.update(doc["text"].encode("utf-8"))
    return digest.hexdigest()
