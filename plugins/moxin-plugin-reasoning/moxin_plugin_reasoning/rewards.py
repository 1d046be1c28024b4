"""Verifiable rewards for GRPO: ``math``, ``format`` and ``length``.

Each is registered through ``moxin_reward_functions``: ``factory(**options)`` returns a callable
``reward(prompts, completions, **fields) -> list[float]`` (TRL's reward-function signature, so
TRL reward functions work here and these work in TRL). ``fields`` hold the record's fields, one
value per completion (``answer`` is the reference answer) and ``completion_ids`` (token ids).

**Which part of a completion is the answer** (``extract_answer``): the content of the *last*
``\\boxed{...}`` (braces balanced, ``\\fbox`` too); when there is none, the *last number* in the
text (``-3``, ``1,250``, ``0.75``, ``3/4``; thousands commas dropped); else nothing, which scores 0.

**Equal** (``answers_equal``): both sides are parsed by ``math-verify`` (LaTeX or plain
expressions) and compared as mathematical objects: ``0.5``, ``1/2`` and ``\\frac{1}{2}`` are
equal, ``19`` and ``19.0`` are equal, units in ``\\text{...}`` are ignored. Anything that does not
parse, or takes too long, is unequal: the reward never raises on garbage.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from collections.abc import Sequence
from typing import Any

from moxin_core.api import MoxinError

BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:\s*/\s*\d+)?")


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` with balanced braces, or None."""
    found = None
    for match in BOX.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found = text[start:i].strip()
                break
    return found


def extract_answer(text: str) -> str | None:
    """The final answer of a completion by the documented rule (module docstring)."""
    if not isinstance(text, str):
        return None
    box = _last_boxed(text)
    if box:
        return box
    numbers = NUMBER.findall(text)
    if not numbers:
        return None
    return re.sub(r"\s+", "", numbers[-1]).replace(",", "")


def _timeouts() -> tuple[dict[str, Any], dict[str, Any]]:
    # math-verify bounds parsing and comparison with SIGALRM, which only the main thread has
    main = threading.current_thread() is threading.main_thread()
    return {"parsing_timeout": 5 if main else None}, {"timeout_seconds": 5 if main else None}


PLAIN = re.compile(r"^\s*(-?\d+(?:\.\d+)?)(?:\s*/\s*(\d+))?\s*$")


def _plain(text: str) -> Fraction | None:
    """A plain integer, decimal or ``a/b`` as an exact fraction (the common case, compared
    without math-verify's symbolic parser, which takes milliseconds per answer)."""
    match = PLAIN.match(text)
    if not match:
        return None
    if match.group(2) is not None:
        return Fraction(match.group(1)) / int(match.group(2)) if int(match.group(2)) else None
    return Fraction(match.group(1))


def answers_equal(prediction: str | None, reference: Any) -> bool:
    """Whether ``prediction`` (an extracted answer) equals ``reference`` mathematically."""
    if prediction is None or reference is None:
        return False
    fast = (_plain(prediction), _plain(str(reference)))
    if None not in fast:
        return fast[0] == fast[1]
    try:
        from math_verify import parse, verify

        parse_opts, verify_opts = _timeouts()
        gold = parse(_as_math(str(reference)), **parse_opts)
        pred = parse(_as_math(prediction), **parse_opts)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, **verify_opts))
    except Exception:  # noqa: BLE001 - garbage scores 0, never stops training
        return False


def _as_math(text: str) -> str:
    """Delimit a bare answer so math-verify reads it as LaTeX (``\\frac{1}{2}``, ``3/4``)."""
    text = text.strip()
    return text if text.startswith("$") or "\\boxed" in text else f"${text}$"


class MathReward:
    """1.0 when the completion's final answer equals the reference ``answer``, else 0.0.

    Args:
        answer_field: the field holding the reference answer.
    """

    def __init__(self, answer_field: str = "answer") -> None:
        self.answer_field = answer_field

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str],
                 **fields: Any) -> list[float]:
        if self.answer_field not in fields:
            raise MoxinError(f"math reward: the records have no {self.answer_field!r} field "
                             f"(fields: {', '.join(sorted(fields)) or 'none'}).")
        answers = fields[self.answer_field]
        return [float(answers_equal(extract_answer(c), a)) for c, a in zip(completions, answers)]


class FormatReward:
    """1.0 when the completion states its answer in the expected form, else 0.0.

    Args:
        pattern: a regular expression the completion must contain; the default asks for a
            non-empty ``\\boxed{...}`` answer.
    """

    def __init__(self, pattern: str | None = None) -> None:
        try:
            self.pattern = re.compile(pattern) if pattern else None
        except re.error as exc:
            raise MoxinError(f"format reward: bad pattern {pattern!r} ({exc}).") from None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str],
                 **fields: Any) -> list[float]:
        if self.pattern is not None:
            return [float(bool(self.pattern.search(c))) for c in completions]
        return [float(bool(_last_boxed(c))) for c in completions]


class LengthReward:
    """DAPO's soft overlong penalty on completion tokens: 0 up to ``max_length - cache``, then
    falling linearly to -1 at ``max_length``, and -1 beyond.

    Args:
        max_length: the completion length (tokens) that earns the full penalty.
        cache: the width of the linear ramp before it.
    """

    def __init__(self, max_length: int = 16384, cache: int = 4096) -> None:
        if not 0 < cache <= max_length:
            raise MoxinError(f"length reward: need 0 < cache <= max_length, got cache={cache}, "
                             f"max_length={max_length}.")
        self.max_length, self.cache = max_length, cache

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str],
                 **fields: Any) -> list[float]:
        ids = fields.get("completion_ids")
        if ids is None:
            raise MoxinError("length reward: needs completion_ids (the GRPO objective passes "
                             "them).")
        free = self.max_length - self.cache
        out = []
        for tokens in ids:
            n = len(tokens)
            out.append(0.0 if n <= free else -1.0 if n > self.max_length
                       else (free - n) / self.cache)
        return out


REWARDS = {"math": MathReward, "format": FormatReward, "length": LengthReward}
