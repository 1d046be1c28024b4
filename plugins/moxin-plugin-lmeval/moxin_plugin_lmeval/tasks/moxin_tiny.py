"""Data of moxin's offline lm-eval tasks, generated on the fly (no download, byte-identical on
every machine): one-step arithmetic word problems in the embedded corpus's format, drawn with a
seed the training corpus does not use.

``moxin_tiny_mc`` asks the model to pick the result of the worked equation among four numbers
(loglikelihood, ``acc``); ``moxin_tiny_gen`` asks it to write the result (generation,
``exact_match`` on the first number it writes). lm-eval imports this file through the tasks'
``!function`` tags, so the task folder works with lm-eval's own command line too
(``lm_eval --include_path <this folder> --tasks moxin_tiny_mc``).
"""

from __future__ import annotations

import random

#: the problems' seed (the embedded training corpus draws from seed 0 upwards)
SEED = 7_000_003
NUM_DOCS = 1000


def problems(num: int = NUM_DOCS, seed: int = SEED) -> list[dict]:
    """``num`` problems: ``question``, ``prefix`` (the worked solution up to its ``=``),
    ``answer`` (the result, a string), ``choices`` (four numbers, one right) and ``label``."""
    from moxin_core.api import arithmetic_problem

    rng = random.Random(seed)
    docs = []
    for _ in range(num):
        problem = arithmetic_problem(rng)
        solution = problem["solution"]
        prefix = solution[: solution.rindex("=") + 1]
        answer = int(problem["answer"])
        wrong = [answer + d for d in (1, -1, 10, -10, 2, -2, 5, 20) if answer + d >= 0]
        choices = [answer, *rng.sample(wrong, 3)]
        rng.shuffle(choices)
        docs.append({"question": problem["question"], "prefix": prefix, "answer": str(answer),
                     "choices": [str(c) for c in choices], "label": choices.index(answer)})
    return docs


def _dataset(**_metadata):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(problems())})


def tiny_mc(**metadata):
    """``custom_dataset`` of ``moxin_tiny_mc``."""
    return _dataset(**metadata)


def tiny_gen(**metadata):
    """``custom_dataset`` of ``moxin_tiny_gen``."""
    return _dataset(**metadata)
