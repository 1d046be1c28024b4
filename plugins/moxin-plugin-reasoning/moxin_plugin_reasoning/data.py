"""Data sources of the reasoning stages (the embedded problems of ``problems.py``).

* ``embedded_problems``: prompt records for GRPO, ``{"problem", "answer", "level"}``;
* ``embedded_reasoning``: the same problems as SFT conversations, the user turn being the problem
  with DeepScaleR's instruction appended (exactly the prompt GRPO and ``heldout-math`` use), the
  assistant turn the worked solution ending in ``\\boxed{answer}``; with ``direct_share`` that
  share of the problems (chosen by a hash of the question, so a question is always treated
  alike) is answered without working, ``The answer is \\boxed{N}.`` alone. The tiny reasoning
  recipe trains on half of each so that GRPO has a habit to change: answering straight away,
  which a tiny model gets wrong far more often than working first.

Both take ``split`` (``train``/``heldout``, disjoint by a hash of the question), ``seed``,
``num_examples`` and ``levels`` (a subset of 1-4). Prompt data of your own comes through the core's
``files`` (JSONL, Parquet) and ``hf_dataset`` sources; the GRPO objective reads the question from
``problem``, ``question`` or ``prompt`` and the answer from ``answer`` unless told other field
names, so DeepScaleR's data works as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from moxin_core.api import ORIGIN, DataSource, MoxinError

from moxin_plugin_reasoning.problems import (INSTRUCTION, LEVELS, SPLITS, boxed, check_levels,
                                             iter_problems)


def is_direct(question: str, share: float) -> bool:
    """Whether the trace of ``question`` answers without working (a hash-chosen ``share``)."""
    digest = hashlib.sha256(f"direct:{question}".encode()).digest()
    return int.from_bytes(digest[:4], "big") < share * 2**32


class _Embedded(DataSource):
    name = "embedded"

    def __init__(self, split: str = "train", seed: int = 0, num_examples: int = 5000,
                 levels: list[int] | tuple[int, ...] = LEVELS) -> None:
        if split not in SPLITS:
            raise MoxinError(f"{self.name}: split must be one of {', '.join(SPLITS)}, got {split!r}.")
        if num_examples <= 0:
            raise MoxinError(f"{self.name}: num_examples must be positive, got {num_examples}.")
        self.split, self.seed, self.num_examples = split, seed, num_examples
        self.levels = check_levels(levels)

    def _problems(self, position: list | None) -> Iterator[tuple[dict, list]]:
        count, index = position or (0, 0)
        for index, problem in iter_problems(self.seed, self.split, self.levels, index):
            if count >= self.num_examples:
                return
            count += 1
            problem[ORIGIN] = f"{self.name}[{self.split}, seed={self.seed}]:{index}"
            yield problem, [count, index + 1]

    def fingerprint(self) -> str:
        key = f"{self.name}:{self.split}:{self.seed}:{self.num_examples}:{self.levels}"
        if getattr(self, "direct_share", 0.0):
            key += f":direct={self.direct_share}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def describe(self) -> str:
        extra = (f", direct_share={self.direct_share}" if getattr(self, "direct_share", 0.0)
                 else "")
        return (f"{self.name}(split={self.split}, seed={self.seed}, "
                f"num_examples={self.num_examples}, levels={list(self.levels)}{extra})")


class EmbeddedProblems(_Embedded):
    """Generated maths problems with reference answers (GRPO prompts)."""

    name = "embedded_problems"

    def iter_from(self, position: list | None) -> Iterator[tuple[dict, list]]:
        for problem, pos in self._problems(position):
            yield {"problem": problem["problem"], "answer": problem["answer"],
                   "level": problem["level"], ORIGIN: problem[ORIGIN]}, pos


class EmbeddedReasoning(_Embedded):
    """The generated problems as SFT conversations with worked, boxed solutions."""

    name = "embedded_reasoning"

    def __init__(self, split: str = "train", seed: int = 0, num_examples: int = 5000,
                 levels: list[int] | tuple[int, ...] = LEVELS,
                 direct_share: float = 0.0) -> None:
        super().__init__(split, seed, num_examples, levels)
        if not 0.0 <= direct_share <= 1.0:
            raise MoxinError(f"{self.name}: direct_share must be in [0, 1], got {direct_share}.")
        self.direct_share = direct_share

    def iter_from(self, position: list | None) -> Iterator[tuple[dict, list]]:
        for problem, pos in self._problems(position):
            reply = (boxed(problem["answer"]) if is_direct(problem["problem"], self.direct_share)
                     else problem["solution"])
            messages = [{"role": "user", "content": f"{problem['problem']} {INSTRUCTION}"},
                        {"role": "assistant", "content": reply}]
            yield {"messages": messages, "level": problem["level"], ORIGIN: problem[ORIGIN]}, pos
