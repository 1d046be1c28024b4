"""Tests for the embedded default corpus (moxin_core.corpus)."""

import random
import re

import pytest

from moxin_core.corpus import (
    DEFAULT_MIX,
    KINDS,
    arithmetic_problem,
    corpus_fingerprint,
    generate_document,
    iter_corpus,
)

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def _texts(**kwargs):
    return [doc["text"] for doc in iter_corpus(**kwargs)]


def _check_solution(solution: str, answer: int) -> None:
    equations = EQUATION.findall(solution)
    assert len(equations) == 1, solution
    a, op, b, c = equations[0]
    a, b, c = int(a), int(b), int(c)
    expected = {"+": a + b, "-": a - b, "*": a * b}.get(op)
    if op == "/":
        assert b != 0 and a % b == 0, solution  # division must be exact
        expected = a // b
    assert c == expected == answer, solution
    assert answer >= 0, solution
    assert solution.endswith(f"The answer is {answer}."), solution


def test_public_constants():
    assert KINDS == ("prose", "arithmetic", "code")
    assert set(DEFAULT_MIX) <= set(KINDS)
    assert sum(DEFAULT_MIX.values()) > 0


def test_same_seed_is_deterministic():
    first = list(iter_corpus(seed=3, num_documents=300))
    second = list(iter_corpus(seed=3, num_documents=300))
    assert first == second
    assert [doc["id"] for doc in first] == list(range(300))
    assert all(doc["kind"] in KINDS and doc["text"] for doc in first)


def test_different_seed_differs():
    assert _texts(seed=0, num_documents=200) != _texts(seed=1, num_documents=200)


def test_start_equals_slicing():
    full = list(iter_corpus(seed=5, num_documents=400))
    for start in (0, 1, 137, 399, 400, 450):
        assert list(iter_corpus(seed=5, num_documents=400, start=start)) == full[start:]


def test_document_depends_only_on_seed_and_index():
    # Growing the corpus must not change earlier documents.
    assert _texts(seed=2, num_documents=500)[:100] == _texts(seed=2, num_documents=100)


def test_arithmetic_problem_is_consistent():
    rng = random.Random(1234)
    ops = set()
    for _ in range(3000):
        problem = arithmetic_problem(rng)
        assert set(problem) == {"question", "answer", "solution"}
        assert isinstance(problem["answer"], int)
        assert problem["question"].endswith("?")
        _check_solution(problem["solution"], problem["answer"])
        ops.add(EQUATION.search(problem["solution"]).group(2))
    assert ops == {"+", "-", "*", "/"}


def test_arithmetic_documents_are_consistent():
    docs = [d for d in iter_corpus(seed=0, num_documents=2000) if d["kind"] == "arithmetic"]
    assert docs
    for doc in docs:
        match = re.fullmatch(r"Question: (.+)\nAnswer: (.+)", doc["text"])
        assert match, doc["text"]
        answer = int(re.search(r"The answer is (\d+)\.$", match.group(2)).group(1))
        _check_solution(match.group(2), answer)


def test_code_documents_compile():
    docs = [d for d in iter_corpus(seed=0, num_documents=3000) if d["kind"] == "code"]
    assert docs
    for doc in docs:
        compile(doc["text"], f"<corpus {doc['id']}>", "exec")
    texts = "\n".join(doc["text"] for doc in docs)
    assert "def " in texts and "class " in texts and '"""' in texts
    assert "\t#" in texts  # tab-indented comments appear sometimes


def test_generate_document_kinds():
    for kind in KINDS:
        text = generate_document(random.Random(7), kind)
        assert text == generate_document(random.Random(7), kind)
        assert len(text.split()) >= 5
    with pytest.raises(ValueError):
        generate_document(random.Random(0), "poetry")


def test_prose_is_mostly_ascii_with_some_unicode():
    prose = [d["text"] for d in iter_corpus(num_documents=3000, mix={"prose": 1.0})]
    with_unicode = sum(any(ord(ch) > 127 for ch in text) for text in prose)
    assert 0.01 * len(prose) < with_unicode < 0.12 * len(prose)


def test_mix_is_respected():
    mix = {"prose": 0.5, "arithmetic": 0.3, "code": 0.2}
    n = 3000
    counts = {kind: 0 for kind in KINDS}
    for doc in iter_corpus(seed=11, num_documents=n, mix=mix):
        counts[doc["kind"]] += 1
    for kind, weight in mix.items():
        assert abs(counts[kind] / n - weight) < 0.04, counts


def test_unnormalised_mix_and_default():
    weights = {"prose": 2, "arithmetic": 1, "code": 1}
    counts = {kind: 0 for kind in KINDS}
    for doc in iter_corpus(seed=4, num_documents=3000, mix=weights):
        counts[doc["kind"]] += 1
    assert abs(counts["prose"] / 3000 - 0.5) < 0.04, counts
    assert _texts(num_documents=50) == _texts(num_documents=50, mix=DEFAULT_MIX)


@pytest.mark.parametrize("kind", KINDS)
def test_single_kind_mix(kind):
    docs = list(iter_corpus(seed=9, num_documents=200, mix={kind: 1.0}))
    assert {doc["kind"] for doc in docs} == {kind}
    zeros = {k: 0.0 for k in KINDS}
    zeros[kind] = 0.5
    assert {doc["kind"] for doc in iter_corpus(num_documents=100, mix=zeros)} == {kind}


@pytest.mark.parametrize(
    "mix",
    [
        {"poetry": 1.0},
        {"prose": 1.0, "poetry": 0.5},
        {"prose": -0.1, "code": 1.0},
        {"prose": 0.0, "arithmetic": 0.0, "code": 0.0},
        {},
        {"prose": float("nan")},
    ],
)
def test_bad_mix_raises(mix):
    with pytest.raises(ValueError):
        list(iter_corpus(num_documents=10, mix=mix))
    with pytest.raises(ValueError):
        corpus_fingerprint(num_documents=10, mix=mix)


def test_negative_num_documents_raises():
    with pytest.raises(ValueError):
        list(iter_corpus(num_documents=-1))
    with pytest.raises(ValueError):
        iter_corpus(start=-1)  # validated eagerly, before iteration
    with pytest.raises(ValueError):
        iter_corpus(mix={"poetry": 1.0})


def test_fingerprint_stable_and_seed_sensitive():
    first = corpus_fingerprint(seed=0, num_documents=2000)
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert corpus_fingerprint(seed=0, num_documents=2000) == first
    assert corpus_fingerprint(seed=1, num_documents=2000) != first
    assert corpus_fingerprint(seed=0, num_documents=1999) != first


def test_fingerprint_matches_definition():
    import hashlib

    texts = _texts(seed=3, num_documents=50)
    expected = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()
    assert corpus_fingerprint(seed=3, num_documents=50) == expected
    assert corpus_fingerprint(seed=3, num_documents=0) == hashlib.sha256(b"").hexdigest()


def test_vocabulary_and_length_are_reasonable():
    texts = _texts(seed=0, num_documents=2000)
    words = set()
    for text in texts:
        words.update(w.lower() for w in re.findall(r"[^\W\d_]+", text))
    assert len(words) > 300
    mean = sum(len(text.split()) for text in texts) / len(texts)
    assert 30 <= mean <= 130
