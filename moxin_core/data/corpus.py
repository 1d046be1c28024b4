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
from string import Template
from typing import Iterator

KINDS: tuple[str, ...] = ("prose", "arithmetic", "code")
DEFAULT_MIX: dict[str, float] = {"prose": 0.5, "arithmetic": 0.3, "code": 0.2}


def _w(text: str) -> list[str]:
    """Split a whitespace-separated word list (keeps the lists compact)."""
    return text.split()


def _pairs(text: str) -> list[tuple[str, str]]:
    """Parse "singular/plural" entries into (singular, plural) tuples."""
    return [tuple(item.split("/")) for item in text.split()]  # type: ignore[misc]


# ---------------------------------------------------------------- word lists
# Lists (not sets) everywhere: iteration order must never depend on hashing.
FEMALE_NAMES = _w("Mia Anna Lucy Emma Nora Ruth Clara Ella Maya Iris Hannah Rosa Leah Alice Grace Julia")
MALE_NAMES = _w("Tom Leo Sam Ben Max Hugo Oscar Felix Adam Noah Jack Omar Victor Peter Daniel Ivan")
NAMES: list[tuple[str, str]] = [(n, "f") for n in FEMALE_NAMES] + [(n, "m") for n in MALE_NAMES]
# Used only in the rare Unicode documents.
UNICODE_NAMES = [("Zoë", "f"), ("José", "m"), ("Chloé", "f"), ("Søren", "m"), ("Björn", "m"),
                 ("Renée", "f"), ("Łukasz", "m"), ("Inès", "f"), ("Jürgen", "m"), ("Siân", "f")]
UNICODE_PEOPLE = ["Dr. Ångström", "Mr. Müller", "Ms. Núñez", "Mr. Øberg"]
UNICODE_PLACES = _w("Kraków Zürich Malmö Reykjavík Göttingen Besançon Tromsø Łódź")
CJK_PHRASES = ["你好", "谢谢", "こんにちは", "안녕하세요", "早上好"]
EMOJI = ["🙂", "🌞", "🍎", "🐟", "📚", "🌧", "🚲", "🎵"]
PRONOUNS = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}  # subject, object, possessive

OCCUPATIONS = _w("baker teacher farmer painter doctor sailor gardener carpenter potter weaver nurse "
                 "librarian tailor miller shepherd builder musician merchant student poet cook "
                 "driver clockmaker beekeeper fisher blacksmith")
PERSON_ADJ = _w("quiet young old cheerful tired clever patient busy kind curious brave careful "
                "friendly shy honest gentle proud calm eager polite")
# Objects are grouped so that verbs and adjectives match their nouns.
OBJECTS = {
    "food": _pairs("apple/apples pear/pears cake/cakes pie/pies loaf/loaves fish/fish egg/eggs "
                   "plum/plums onion/onions cherry/cherries potato/potatoes carrot/carrots lemon/lemons"),
    "tool": _pairs("hammer/hammers rope/ropes ladder/ladders bucket/buckets lantern/lanterns "
                   "shovel/shovels needle/needles brush/brushes kettle/kettles saw/saws"),
    "text": _pairs("book/books letter/letters map/maps note/notes poem/poems recipe/recipes "
                   "newspaper/newspapers postcard/postcards story/stories"),
    "thing": _pairs("box/boxes chair/chairs flower/flowers stone/stones shell/shells coat/coats "
                    "hat/hats bottle/bottles blanket/blankets cup/cups bowl/bowls basket/baskets"),
}
OBJECT_VERBS = {
    "food": _w("buys sells carries cooks shares washes counts wraps slices"),
    "tool": _w("carries repairs cleans borrows finds packs holds sharpens"),
    "text": _w("reads writes finds folds copies sends studies hides"),
    "thing": _w("carries paints finds cleans moves sells buys wraps polishes"),
}
OBJECT_ADJ = {
    "food": _w("fresh ripe warm sweet small large tasty golden"),
    "tool": _w("old heavy rusty new long sturdy sharp"),
    "text": _w("long short old strange funny secret"),
    "thing": _w("blue tiny clean new yellow pretty heavy lovely"),
}
PLACES = ["near the harbour", "at the market", "in the garden", "by the river", "behind the library",
          "in the kitchen", "on the hill", "at the station", "in the village square",
          "under the old bridge", "beside the mill", "in the forest", "at the bakery",
          "on the beach", "in the workshop", "near the school", "at the edge of the field"]
DESTINATIONS = _w("market harbour library school farm bakery mill station park bridge museum")
TIMES = ["In the morning", "Every evening", "On Sunday", "After lunch", "At noon", "Early today",
         "Before sunrise", "On a cold afternoon", "Last winter", "One spring day", "At dusk"]
CONNECTIVES = _w("Later Then Afterwards Meanwhile Soon Suddenly Finally") + ["After that", "A little later"]
INTRANSITIVE = ["rests", "sings softly", "waits patiently", "works hard", "reads quietly",
                "takes a short walk", "drinks some tea", "sits down", "plays the flute",
                "watches the birds", "laughs", "hums a tune"]
# (feelings that fit, reason) so that "feels X because Y" makes sense.
FEELINGS = [("happy calm", "the sun is warm"), ("tired", "the road is long"),
            ("proud happy", "the work is almost done"), ("cold", "the wind is strong"),
            ("excited happy", "a friend is coming to visit"), ("worried", "the sky is getting dark"),
            ("glad calm", "the rain has stopped"), ("hungry", "it is almost time for dinner"),
            ("sleepy tired", "the day was long"), ("nervous", "the bridge is old")]
SKIES = [("sky", "grey"), ("sky", "clear"), ("wind", "strong"), ("air", "cold"), ("rain", "heavy")]
GREETINGS = ["Good morning", "Hello there", "Thank you", "See you soon", "Welcome back", "Good luck"]
NUMBER_WORDS = _w("two three four five six seven eight nine ten")
CONTAINERS = _pairs("bag/bags box/boxes basket/baskets jar/jars crate/crates")


def _an(word: str) -> str:
    """Indefinite article; the adjectives and nouns avoid silent-h / "you" sounds."""
    return "an" if word[0].lower() in "aeiou" else "a"


def _cap(text: str) -> str:
    """Upper-case the first character only (names inside stay as they are)."""
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------- prose
def _person(rng: random.Random, names, exclude: str = "", named: bool = False) -> dict:
    """A character: how to introduce them the first time, and later references."""
    if named or rng.random() < 0.5:
        name, gender = rng.choice(names)
        while name == exclude:
            name, gender = rng.choice(names)
        intro = definite = ref = name
        if rng.random() < 0.3:  # apposition: "Mia, a cheerful gardener,"
            adj, occ = rng.choice(PERSON_ADJ), rng.choice(OCCUPATIONS)
            definite = f"{name}, {_an(adj)} {adj} {occ},"
    else:
        gender, adj, occ = rng.choice("fm"), rng.choice(PERSON_ADJ), rng.choice(OCCUPATIONS)
        while occ == exclude:
            occ = rng.choice(OCCUPATIONS)
        intro, definite, ref, name = f"{_an(adj)} {adj} {occ}", f"the {adj} {occ}", f"the {occ}", occ
    he, him, his = PRONOUNS[gender]
    return {"intro": intro, "definite": definite, "ref": ref, "key": name,
            "he": he, "him": him, "his": his, "met": False}


def _mention(person: dict) -> str:
    """Indefinite on first mention ("an old fisher"), definite afterwards."""
    if person["met"]:
        return person["ref"]
    person["met"] = True
    return person["intro"]


def _objphrase(rng: random.Random, his: str) -> tuple[str, str]:
    """Pick an object category and build a noun phrase; returns (verb, phrase)."""
    cat = rng.choice(list(OBJECTS))
    sing, plural = rng.choice(OBJECTS[cat])
    adj = rng.choice(OBJECT_ADJ[cat])
    form = rng.randrange(4)
    if form == 0:
        phrase = f"{_an(adj)} {adj} {sing}"
    elif form == 1:
        phrase = f"the {adj} {sing}"
    elif form == 2:
        phrase = f"{rng.choice(NUMBER_WORDS)} {adj} {plural}"
    else:
        phrase = f"{his} {sing}"
    return rng.choice(OBJECT_VERBS[cat]), phrase


def _sentence(rng: random.Random, p: dict, o: dict, subj: str, used: list[int]) -> str:
    """One body sentence about person p (subject text ``subj``), maybe involving o.

    ``used`` lists the templates already used in this paragraph; they are
    skipped so a paragraph never repeats itself.
    """
    kind = rng.choice([k for k in range(10) if k not in used])
    used.append(kind)
    if kind in (0, 1, 2, 8) and rng.random() < 0.4:
        # Connectives ("Later, ...") only before actions, where they read naturally.
        subj = f"{rng.choice(CONNECTIVES)}, {subj}"
    if kind == 0:
        verb, obj = _objphrase(rng, p["his"])
        return f"{subj} {verb} {obj} {rng.choice(PLACES)}."
    if kind == 1:
        return f"{subj} talks with {_mention(o)} {rng.choice(PLACES)}."
    if kind == 2:
        _, obj = _objphrase(rng, p["his"])
        return f"{subj} gives {_mention(o)} {obj}."
    if kind == 3:
        feelings, reason = rng.choice(FEELINGS)
        return f"{subj} feels {rng.choice(feelings.split())} because {reason}."
    if kind == 4:
        noun, adj = rng.choice(SKIES)
        return f"The {noun} is {adj}, so {p['he']} {rng.choice(INTRANSITIVE)} {rng.choice(PLACES)}."
    if kind == 5:
        cat = rng.choice(list(OBJECTS))
        return f"{subj} likes {rng.choice(OBJECTS[cat])[1]} because they are {rng.choice(OBJECT_ADJ[cat])}."
    if kind == 6:
        return f'"{rng.choice(GREETINGS)}," {subj} says to {_mention(o)}.'
    if kind == 7:
        cat = rng.choice(["food", "tool", "thing"])
        plural, adj = rng.choice(OBJECTS[cat])[1], rng.choice(OBJECT_ADJ[cat])
        box = rng.choice(CONTAINERS)[0]
        return f"{subj} has {rng.choice(NUMBER_WORDS)} {adj} {plural} in {p['his']} {box}."
    if kind == 8:
        return f"{subj} walks to the {rng.choice(DESTINATIONS)} with {_mention(o)}."
    other = _mention(o)
    return f"{_cap(other)} helps {p['him']} carry the {rng.choice(OBJECTS['thing'])[1]}."


def _unicode_sentence(rng: random.Random, p: dict, o: dict, kind: int) -> str:
    """A rare sentence that contains non-ASCII text (accents, CJK or emoji)."""
    if kind == 1:  # o is one of UNICODE_PEOPLE
        return f"{_cap(p['he'])} talks with {_mention(o)} {rng.choice(PLACES)}."
    if kind == 2:
        return f"Next week, {p['he']} travels to {rng.choice(UNICODE_PLACES)} by train."
    if kind == 3:
        return f'A visitor greets {p["him"]} with "{rng.choice(CJK_PHRASES)}", and {p["he"]} smiles.'
    return f"{_cap(p['he'])} draws a little {rng.choice(EMOJI)} on a note for {_mention(o)}."


def _prose(rng: random.Random) -> str:
    """One to three short paragraphs (2-6 sentences each) about the same character."""
    # About 5% of prose documents carry Unicode: 0 = accented main character,
    # 1 = accented second character, 2-4 = an extra sentence with a place, CJK or emoji.
    unicode_mode = rng.randrange(5) if rng.random() < 0.05 else -1
    if unicode_mode == 0:
        p = _person(rng, UNICODE_NAMES, named=True)
    else:
        p = _person(rng, NAMES)
    if unicode_mode == 1:
        name = rng.choice(UNICODE_PEOPLE)
        o = {"intro": name, "ref": name, "key": name, "met": False}
    else:
        o = _person(rng, NAMES, exclude=p["key"])
    paragraphs = []
    for index in range(rng.choice([1, 1, 2, 2, 3])):
        verb, obj = _objphrase(rng, p["his"])
        subject = p["definite"] if index == 0 else p["ref"]
        opener = rng.choice(TIMES) if index == 0 else rng.choice(CONNECTIVES)
        sentences, used = [f"{opener}, {subject} {verb} {obj} {rng.choice(PLACES)}."], []
        for _ in range(rng.randint(1, 5)):
            # Prefer the pronoun; repeat the name now and then, as people do.
            subj = p["he"] if rng.random() < 0.65 else p["ref"]
            sentences.append(_sentence(rng, p, o, subj, used))
        paragraphs.append(sentences)
    if unicode_mode >= 1:
        body = paragraphs[-1]
        body.insert(rng.randint(1, len(body)), _unicode_sentence(rng, p, o, unicode_mode))
    return "\n\n".join(" ".join(_cap(s) for s in para) for para in paragraphs)


# ---------------------------------------------------------------- arithmetic
ITEMS = _pairs("apple/apples pencil/pencils marble/marbles sticker/stickers cookie/cookies "
               "book/books shell/shells stamp/stamps coin/coins card/cards flower/flowers "
               "orange/oranges button/buttons balloon/balloons")
ACTIVITIES = [("reads", "page", "pages"), ("collects", "shell", "shells"),
              ("bakes", "cookie", "cookies"), ("plants", "tree", "trees"),
              ("writes", "letter", "letters"), ("paints", "picture", "pictures")]
DAYS = _w("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
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
            q = (f"{name} has {a} {plural}. {_cap(he)} buys {b} more. "
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
            q = (f"{name} has {a} {plural}. {_cap(he)} gives {_n(b, sing, plural)} to {friend}. "
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
            q = (f"{_cap(_an(place))} {place} has {a} rows of {things}, with {b} {things} in each row. "
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


# ---------------------------------------------------------------- code
# Template markers: "  ## text" is an optional trailing comment and a line
# holding only "## text" is an optional standalone comment; _render_code
# decides per document whether (and how) comments appear.
CODE_NOUNS = _pairs("price/prices score/scores item/items order/orders ticket/tickets "
                    "sample/samples record/records value/values task/tasks reading/readings "
                    "payment/payments step/steps point/points weight/weights length/lengths")
TABLE_KEYS = _w("apple banana cherry lemon melon bread cheese butter tea coffee rice honey")
LABELS = [("small", "medium", "large"), ("low", "normal", "high"), ("cold", "warm", "hot"),
          ("short", "average", "long")]
# Each entry: (template, example call or None).  Templates are flush-left
# Python in triple quotes so they read like the code they produce.
CODE_TEMPLATES = [
    ('''def total_$plural($plural):
    """Return the sum of all $plural."""
    result = 0  ## start from zero
    for $sing in $plural:
        ## add each $sing to the running total
        result += $sing
    return result
''', "print(total_$plural($numbers))"),
    ('''def count_large_$plural($plural, limit=$limit):
    """Count how many $plural are greater than limit."""
    count = 0  ## number of matches so far
    for $sing in $plural:
        if $sing > limit:
            count += 1
    return count
''', "print(count_large_$plural($numbers))"),
    ('''def describe_$sing($sing):
    """Return a label for how large the $sing is."""
    if $sing < $lo:  ## below the first threshold
        return "$l0"
    elif $sing < $hi:
        return "$l1"
    else:
        ## everything else counts as $l2
        return "$l2"
''', "print(describe_$sing($limit))"),
    ('''def largest_$sing($plural):
    """Return the largest $sing, or None if the list is empty."""
    best = None  ## nothing seen yet
    for $sing in $plural:
        if best is None or $sing > best:
            best = $sing
    return best
''', "print(largest_$sing($numbers))"),
    ('''def even_$plural($plural):
    """Return a new list with only the even $plural."""
    kept = []  ## the result list
    for $sing in $plural:
        if $sing % 2 == 0:
            kept.append($sing)
    return kept
''', "print(even_$plural($numbers))"),
    ('''def digit_sum(number):
    """Return the sum of the digits of a non-negative number."""
    total = 0  ## sum of digits seen so far
    while number > 0:
        total += number % 10
        number //= 10  ## drop the last digit
    return total
''', "print(digit_sum($big))"),
    ('''def greet(name, times=$small):
    """Return a greeting repeated a few times."""
    parts = []
    for _ in range(times):
        parts.append("Hello, " + name + "!")
    return " ".join(parts)
''', 'print(greet("$name"))'),
    ('''class ${Cap}Counter:
    """Keep a running count and total of $plural."""

    def __init__(self):
        self.count = 0  ## how many were added
        self.total = 0  ## their sum

    def add(self, $sing):
        """Add one $sing to the counter."""
        self.count += 1
        self.total += $sing

    def average(self):
        """Return the average $sing, or 0 if nothing was added."""
        if self.count == 0:
            ## avoid dividing by zero
            return 0
        return self.total / self.count
''', None),
    ('''class ${Cap}Store:
    """Store $plural by name."""

    def __init__(self):
        self.$plural = {}

    def put(self, name, amount):
        """Add amount to whatever is stored under name."""
        if name in self.$plural:
            self.$plural[name] += amount
        else:
            self.$plural[name] = amount

    def get(self, name):
        """Return the amount stored under name, or 0."""
        return self.$plural.get(name, 0)
''', None),
]


def _table_snippet(rng: random.Random, sing: str, plural: str) -> tuple[str, str]:
    """A constant dict with aligned value columns, plus a lookup function."""
    keys = TABLE_KEYS[:]
    rng.shuffle(keys)
    keys = keys[: rng.randint(3, 6)]
    width = max(len(k) for k in keys) + 3  # quotes and colon
    const = f"{plural.upper()}_BY_NAME"
    entries = [(f'"{key}":', rng.randint(1, 99)) for key in keys]
    rows = "".join(f"    {key.ljust(width)} {value},\n" for key, value in entries)
    code = (f"{const} = {{\n{rows}}}\n\n\ndef lookup_{sing}(name):\n"
            f'    """Return the {sing} for name, or 0 if it is unknown."""\n'
            f"    return {const}.get(name, 0)\n")
    return code, f'print(lookup_{sing}("{keys[0]}"))'


def _render_code(rng: random.Random, text: str) -> str:
    """Resolve the ## comment markers: drop them, or show them (aligned or not)."""
    show, align, tab = rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.3
    rows: list[tuple[str, str]] = []  # (code, trailing comment or "")
    for line in text.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith("## "):
            if show:  # standalone comment; tab-indented now and then
                indent = "\t" if tab else line[: len(line) - len(stripped)]
                rows.append((indent + "# " + stripped[3:], ""))
            continue
        code, _, note = line.partition("  ## ")
        rows.append((code, note if show else ""))
    # Aligned mode pads every commented line to one column: runs of spaces.
    column = max((len(code) for code, note in rows if note), default=0) + 2
    return "\n".join(
        (code.ljust(column) if align else code + "  ") + "# " + note if note else code
        for code, note in rows
    )


def _code(rng: random.Random) -> str:
    """One or two snippets, optionally followed by example calls."""
    snippets, calls = [], []
    for _ in range(1 if rng.random() < 0.6 else 2):
        sing, plural = rng.choice(CODE_NOUNS)
        lo = rng.randint(2, 20)
        labels = rng.choice(LABELS)
        fields = {"sing": sing, "plural": plural, "Cap": sing.capitalize(), "limit": rng.randint(5, 50),
                  "lo": lo, "hi": lo + rng.randint(5, 30), "l0": labels[0], "l1": labels[1],
                  "l2": labels[2], "small": rng.randint(2, 4), "big": rng.randint(100, 99999),
                  "name": rng.choice(NAMES)[0],
                  "numbers": "[" + ", ".join(str(rng.randint(0, 99)) for _ in range(rng.randint(2, 6))) + "]"}
        if rng.random() < 0.15:
            code, call = _table_snippet(rng, sing, plural)
        else:
            template, call_t = rng.choice(CODE_TEMPLATES)
            code = Template(template).substitute(fields)
            call = Template(call_t).substitute(fields) if call_t else None
        snippets.append(_render_code(rng, code).rstrip("\n") + "\n")
        if call and rng.random() < 0.4:
            calls.append(call + "\n")
    text = "\n\n".join(snippets)
    return text + ("\n\n" + "".join(calls) if calls else "")


# ---------------------------------------------------------------- corpus
def generate_document(rng: random.Random, kind: str) -> str:
    """Generate one document of the given kind using only ``rng``."""
    if kind == "prose":
        return _prose(rng)
    if kind == "arithmetic":
        problem = arithmetic_problem(rng)
        return f"Question: {problem['question']}\nAnswer: {problem['solution']}"
    if kind == "code":
        return _code(rng)
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
                start: int = 0) -> Iterator[dict]:
    """Yield {"text", "kind", "id"} for document ids start..num_documents-1.

    Document i depends only on (seed, i, mix): it gets a fresh
    ``random.Random(f"moxin-corpus:{seed}:{i}")``, picks its kind from the mix
    with that rng, then generates.  So ``start=k`` gives exactly the documents
    that skipping the first k would, without generating them.
    """
    if num_documents < 0:
        raise ValueError(f"num_documents must be >= 0, got {num_documents}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    weights = _check_mix(mix)  # validated here, eagerly, not on the first next()
    return _generate(seed, num_documents, weights, start)


def _generate(seed: int, num_documents: int, weights: list[tuple[str, float]],
              start: int) -> Iterator[dict]:
    for i in range(start, num_documents):
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
