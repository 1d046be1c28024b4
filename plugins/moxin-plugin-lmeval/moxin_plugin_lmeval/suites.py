"""The evaluation suites: lm-eval task names with their shot counts and the metric each table
reports (DESIGN.md §2, the Moxin README's tables).

A suite's columns are what ``moxin eval --suite NAME`` prints; where the Moxin README has a
table of the same columns, its rows are shipped as reference rows (``references.json``) and the
report prints them beside the model's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One table column: an lm-eval task (or group), its shots and the metric shown."""

    label: str
    task: str
    shots: int
    metric: str


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    columns: tuple[Column, ...]
    #: keys of references.json holding the Moxin README's rows for this table
    references: tuple[str, ...] = ()

    @property
    def tasks(self) -> list[str]:
        return [c.task for c in self.columns]


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("open-llm", "the Open LLM Leaderboard table of the Moxin README (few-shot)",
          (Column("ARC-C", "arc_challenge", 25, "acc_norm"),
           Column("Hellaswag", "hellaswag", 10, "acc_norm"),
           Column("MMLU", "mmlu", 5, "acc"),
           Column("WinoGrade", "winogrande", 5, "acc")),
          ("base/open-llm", "instruct/open-llm")),
    Suite("zero-shot", "the zero-shot table of the Moxin README",
          (Column("HellaSwag", "hellaswag", 0, "acc_norm"),
           Column("WinoGrade", "winogrande", 0, "acc"),
           Column("PIQA", "piqa", 0, "acc_norm"),
           Column("ARC-E", "arc_easy", 0, "acc_norm"),
           Column("ARC-C", "arc_challenge", 0, "acc_norm")),
          ("base/zero-shot", "instruct/zero-shot")),
    Suite("reasoning", "the reasoning table of the Moxin README (generation, answer checking)",
          (Column("MATH 500", "minerva_math500", 0, "math_verify"),
           Column("AMC", "moxin_amc", 0, "exact_match"),
           Column("Minerva Math", "minerva_math", 4, "math_verify"),
           Column("OlympiadBench", "moxin_olympiadbench", 0, "exact_match")),
          ("reasoning",)),
    Suite("tiny", "moxin's offline tasks on the embedded arithmetic (no download)",
          (Column("tiny-mc", "moxin_tiny_mc", 0, "acc"),
           Column("tiny-gen", "moxin_tiny_gen", 0, "exact_match"))),
)}
