"""One-step arithmetic word problems with worked, checkable answers."""

from __future__ import annotations

import random

from moxin_core.corpus.words import (CONTAINERS, NAMES, PRONOUNS, article, capitalise, noun_pairs, word_list)


ITEMS = noun_pairs("apple/apples pencil/pencils marble/marbles sticker/stickers cookie/cookies "
               "book/books shell/shells stamp/stamps coin/coins card/cards flower/flowers "
               "orange/oranges button/buttons balloon/balloons")
ACTIVITIES = [("reads", "page", "pages"), ("collects", "shell", "shells"),
              ("bakes", "cookie", "cookies"), ("plants", "tree", "trees"),
              ("writes", "letter", "letters"), ("paints", "picture", "pictures")]
DAYS = word_list("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
GRIDS = [("hall", "chairs"), ("garden", "roses"), ("orchard", "trees"), ("car park", "cars"),
         ("theatre", "seats")]


def _n(count: int, sing: str, plural: str) -> str:
    """Format a count with the matching noun form: 1 apple, 7 apples."""
    return f"{count} {sing if count == 1 else plural}"


def arithmetic_problem(rng: random.Random) -> dict:
    """Return {"question", "answer", "solution"} for a one-step word problem.

    The solution contains exactly one equation "a OP b = c" (OP in + - * /) and
    ends with "The answer is c.".  Subtraction never goes negative and division
    is always exact.
    """
    name, gender = rng.choice(NAMES)
    friend = rng.choice([n for n, _ in NAMES if n != name])
    he, _, his = PRONOUNS[gender]
    sing, plural = rng.choice(ITEMS)
    op, form = rng.choice("+-*/"), rng.randrange(3)
    if op == "+":
        a, b = rng.randint(2, 99), rng.randint(1, 99)
        c = a + b
        if form == 0:
            q = (f"{name} has {a} {plural}. {capitalise(he)} buys {b} more. "
                 f"How many {plural} does {name} have now?")
            s = f"{name} starts with {a} {plural} and buys {b} more, so {a} + {b} = {c}."
        elif form == 1:
            box = rng.choice(CONTAINERS)[0]
            q = (f"There are {a} {plural} in a {box}. {name} puts {_n(b, sing, plural)} into the {box}. "
                 f"How many {plural} are in the {box} now?")
            s = f"The {box} had {a} {plural} and {b} more were added, so {a} + {b} = {c}."
        else:
            verb, using, uplural = rng.choice(ACTIVITIES)
            day = rng.randrange(6)
            q = (f"On {DAYS[day]}, {name} {verb} {_n(a, using, uplural)}. On {DAYS[day + 1]}, "
                 f"{he} {verb} {_n(b, using, uplural)}. How many {uplural} does {name} "
                 f"{verb[:-1]} on the two days together?")
            s = f"{name} {verb} {a} and then {b} {uplural}, so {a} + {b} = {c}."
    elif op == "-":
        a = rng.randint(2, 99)
        b = rng.randint(1, a)
        c = a - b
        if form == 0:
            q = (f"{name} has {a} {plural}. {capitalise(he)} gives {_n(b, sing, plural)} to {friend}. "
                 f"How many {plural} does {name} have left?")
            s = f"{name} starts with {a} {plural} and gives away {b}, so {a} - {b} = {c}."
        elif form == 1:
            q = (f"A shop has {a} {plural}. In the morning it sells {b} of them. "
                 f"How many {plural} does the shop have left?")
            s = f"The shop starts with {a} {plural} and sells {b}, so {a} - {b} = {c}."
        else:
            verb = "gets" if b == 1 else "get"
            q = (f"A train has {a} passengers. At the next station, {_n(b, 'passenger', 'passengers')} "
                 f"{verb} off and nobody gets on. How many passengers are on the train now?")
            s = f"There were {a} passengers and {b} left the train, so {a} - {b} = {c}."
    elif op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        c = a * b
        if form == 0:
            box, boxes = rng.choice(CONTAINERS)
            q = (f"{name} has {a} {boxes}. Each {box} holds {b} {plural}. "
                 f"How many {plural} does {name} have in total?")
            s = f"There are {a} {boxes} with {b} {plural} in each, so {a} * {b} = {c}."
        elif form == 1:
            place, things = rng.choice(GRIDS)
            q = (f"{capitalise(article(place))} {place} has {a} rows of {things}, with {b} {things} in each row. "
                 f"How many {things} are there?")
            s = f"There are {a} rows with {b} {things} each, so {a} * {b} = {c}."
        else:
            q = f"{name} saves {a} coins every day for {b} days. How many coins does {he} save?"
            s = f"{name} saves {a} coins on each of {b} days, so {a} * {b} = {c}."
    else:
        b, c = rng.randint(2, 10), rng.randint(2, 12)  # divisor and quotient
        a = b * c
        if form == 0:
            q = (f"{name} has {a} {plural} and shares them equally among {b} friends. "
                 f"How many {plural} does each friend get?")
            s = f"{a} {plural} shared equally among {b} friends gives {a} / {b} = {c} each."
        elif form == 1:
            q = (f"There are {a} students in a class. The teacher puts them into groups of {b}. "
                 f"How many groups are there?")
            s = f"{a} students in groups of {b} make {a} / {b} = {c} groups."
        else:
            q = (f"A ribbon is {a} centimetres long. {name} cuts it into {b} equal pieces. "
                 f"How long is each piece in centimetres?")
            s = f"Each piece is {a} / {b} = {c} centimetres long."
    return {"question": q, "answer": c, "solution": f"{s} The answer is {c}."}


