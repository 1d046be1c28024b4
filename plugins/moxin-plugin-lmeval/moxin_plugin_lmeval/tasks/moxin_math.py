"""Answer checking of moxin's competition-maths tasks (AMC, OlympiadBench), which lm-eval does not
ship: the model is asked to put its final answer in ``\\boxed{}`` (DeepScaleR's instruction); the
last box's content is compared with the reference answer by math-verify (equivalent expressions
count), else as normalised text."""

from __future__ import annotations

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


def last_boxed(text: str) -> str | None:
    """The content of the last balanced ``\\boxed{...}`` in ``text``."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1: j]
    return None


def _normal(text: str) -> str:
    return "".join(text.split()).strip("$").rstrip(".").replace("\\!", "")


def is_right(reply: str, answer: str) -> bool:
    boxed = last_boxed(reply)
    if boxed is None:
        return False
    if _normal(boxed) == _normal(str(answer)):
        return True
    try:
        from math_verify import parse, verify
    except ImportError:  # math-verify absent: text comparison only
        return False
    try:
        return bool(verify(parse(f"${answer}$"), parse(f"${boxed}$")))
    except Exception:  # math-verify gives up on some inputs: not equivalent
        return False


def doc_to_text(doc: dict) -> str:
    question = doc.get("problem") or doc.get("question")
    return f"{question} {INSTRUCTION}"


def answer_of(doc: dict) -> str:
    answer = doc.get("answer", doc.get("final_answer"))
    if isinstance(answer, list):  # OlympiadBench keeps a list of final answers
        answer = answer[0] if answer else ""
    return str(answer)


def process_results(doc: dict, results: list[str]) -> dict[str, int]:
    return {"exact_match": int(is_right(results[0], answer_of(doc)))}
