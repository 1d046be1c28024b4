"""The rewards: the answer-extraction rule, mathematical equality, format and length."""

from __future__ import annotations

import threading

import pytest

from moxin_core.errors import MoxinError
from moxin_core.plugins import Registry
from moxin_plugin_reasoning.rewards import (FormatReward, LengthReward, MathReward,
                                            answers_equal, extract_answer)

# (completion, reference answer, reward)
TABLE = [
    # integers, in a box or as the last number
    ("7 + 5 = 12. The answer is \\boxed{12}.", "12", 1.0),
    ("7 + 5 = 12. The answer is \\boxed{13}.", "12", 0.0),
    ("so 12 + 7 = 19. The answer is 19.", "19", 1.0),
    ("so 12 + 7 = 19. The answer is 19.", "20", 0.0),
    ("The answer is \\boxed{19}.", "19.0", 1.0),
    ("\\boxed{-4}", "-4", 1.0),
    ("\\boxed{4}", "-4", 0.0),
    ("There are 1,250 apples.", "1250", 1.0),
    # the last box wins over earlier boxes and later numbers
    ("First \\boxed{3}, corrected: \\boxed{5}.", "5", 1.0),
    ("First \\boxed{3}, corrected: \\boxed{5}.", "3", 0.0),
    ("The answer is \\boxed{12} (checked with 13 items).", "12", 1.0),
    # decimals and fractions, in any form
    ("\\boxed{0.5}", "1/2", 1.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", 1.0),
    ("3/4 of the cake", "0.75", 1.0),
    ("\\boxed{0.75}", "\\frac{3}{4}", 1.0),
    ("\\boxed{0.7}", "\\frac{3}{4}", 0.0),
    ("\\boxed{2/4}", "1/2", 1.0),
    ("\\boxed{0.333}", "1/3", 0.0),
    ("\\boxed{1.50}", "1.5", 1.0),
    # LaTeX expressions
    ("\\boxed{\\sqrt{4}}", "2", 1.0),
    ("\\boxed{2^{3}}", "8", 1.0),
    ("\\boxed{\\frac{\\pi}{2}}", "\\frac{\\pi}{2}", 1.0),
    ("\\boxed{\\pi}", "3", 0.0),
    ("\\boxed{x = 7}", "7", 1.0),
    ("\\boxed{{7}}", "7", 1.0),
    # units
    ("\\boxed{5 \\text{ cm}}", "5", 1.0),
    ("Each piece is 6 centimetres long.", "6", 1.0),
    ("\\boxed{12\\%}", "12", 1.0),
    # garbage scores 0 and never raises
    ("", "3", 0.0),
    ("no numbers here", "3", 0.0),
    ("\\boxed{", "3", 0.0),
    ("\\boxed{}", "0", 0.0),
    ("))(( \\frac{ \\boxed{\\frac{1}{", "2", 0.0),  # unbalanced: the last number, 1
    ("\\boxed{\\undefinedmacro{7}}", "4", 0.0),
    ("\\boxed{7}", "not a number", 0.0),
    ("3/0", "3", 0.0),
]


@pytest.mark.parametrize("completion, answer, expected", TABLE)
def test_math_reward_table(completion, answer, expected):
    assert MathReward()(["q"], [completion], answer=[answer]) == [expected]


def test_the_table_is_large_and_mixed():
    assert len(TABLE) >= 30
    assert {r for _, _, r in TABLE} == {0.0, 1.0}


def test_extraction_rule():
    assert extract_answer("a \\boxed{1} b \\boxed{2} c 3") == "2"  # last box, not last number
    assert extract_answer("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"  # nested braces
    assert extract_answer("\\fbox{9}") == "9"
    assert extract_answer("1, then 2, then 3/4") == "3/4"
    assert extract_answer("about 1,250.5 units") == "1250.5"
    assert extract_answer("nothing") is None
    assert extract_answer(None) is None


def test_equality_works_outside_the_main_thread():
    # math-verify's timeouts use SIGALRM, which only the main thread may set
    results = []
    thread = threading.Thread(target=lambda: results.append(
        answers_equal("\\frac{1}{2}", "\\sqrt{0.25}")))
    thread.start()
    thread.join()
    assert results == [True]


def test_math_reward_needs_the_answer_field():
    with pytest.raises(MoxinError, match="no 'answer' field"):
        MathReward()(["q"], ["1"], solution=["1"])
    assert MathReward(answer_field="target")(["q"], ["\\boxed{2}"], target=["2"]) == [1.0]


def test_format_reward():
    reward = FormatReward()
    assert reward([], ["The answer is \\boxed{4}.", "The answer is 4.", "\\boxed{}"]) == [
        1.0, 0.0, 0.0]
    assert FormatReward(pattern=r"The answer is -?\d+\.")(
        [], ["The answer is 4.", "4"]) == [1.0, 0.0]
    with pytest.raises(MoxinError, match="bad pattern"):
        FormatReward(pattern="(")


def test_length_reward_is_dapos_soft_overlong_penalty():
    reward = LengthReward(max_length=10, cache=4)
    ids = [[0] * n for n in (3, 6, 8, 10, 12)]
    assert reward([], [""] * 5, completion_ids=ids) == [0.0, 0.0, -0.5, -1.0, -1.0]
    with pytest.raises(MoxinError, match="completion_ids"):
        reward([], ["x"])
    with pytest.raises(MoxinError, match="cache"):
        LengthReward(max_length=4, cache=8)


def test_rewards_are_registered_and_third_party_rewards_plug_in():
    from moxin_core import hookimpl
    from moxin_core.plugins import get_plugin_manager

    class ShortAnswers:
        @hookimpl
        def moxin_reward_functions(self):
            return {"short": lambda: lambda prompts, completions, **_: [
                float(len(c) < 10) for c in completions]}

    manager = get_plugin_manager()
    manager.register(ShortAnswers(), name="short-answers")
    registry = Registry(manager)
    assert {"math", "format", "length", "short"} <= set(registry.names("reward_functions"))
    assert registry.get("reward_functions", "short")()([], ["ok", "far too long"]) == [1.0, 0.0]
    assert registry.get("reward_functions", "math")()([], ["\\boxed{1}"], answer=["1"]) == [1.0]
