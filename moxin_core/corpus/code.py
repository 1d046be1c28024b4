"""Small, syntactically valid Python snippets rendered from templates."""

from __future__ import annotations

import random
from string import Template

from moxin_core.corpus.words import (NAMES, noun_pairs, word_list)


# Template markers: "  ## text" is an optional trailing comment and a line
# holding only "## text" is an optional standalone comment; _render_code
# decides per document whether (and how) comments appear.
CODE_NOUNS = noun_pairs("price/prices score/scores item/items order/orders ticket/tickets "
                    "sample/samples record/records value/values task/tasks reading/readings "
                    "payment/payments step/steps point/points weight/weights length/lengths")
TABLE_KEYS = word_list("apple banana cherry lemon melon bread cheese butter tea coffee rice honey")
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


def code_document(rng: random.Random) -> str:
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


