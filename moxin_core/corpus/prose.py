"""Short paragraphs of simple English built from templates and the word lists."""

from __future__ import annotations

import random

from moxin_core.corpus.words import (CJK_PHRASES, CONNECTIVES, CONTAINERS, DESTINATIONS, EMOJI, FEELINGS, GREETINGS, INTRANSITIVE,
                                     NAMES, NUMBER_WORDS, OBJECTS, OBJECT_ADJ, OBJECT_VERBS,
                                     OCCUPATIONS, PERSON_ADJ, PLACES, PRONOUNS, SKIES, TIMES,
                                     UNICODE_NAMES, UNICODE_PEOPLE, UNICODE_PLACES, article,
                                     capitalise)


def _person(rng: random.Random, names, exclude: str = "", named: bool = False) -> dict:
    """A character: how to introduce them the first time, and later references."""
    if named or rng.random() < 0.5:
        name, gender = rng.choice(names)
        while name == exclude:
            name, gender = rng.choice(names)
        intro = definite = ref = name
        if rng.random() < 0.3:  # apposition: "Mia, a cheerful gardener,"
            adj, occ = rng.choice(PERSON_ADJ), rng.choice(OCCUPATIONS)
            definite = f"{name}, {article(adj)} {adj} {occ},"
    else:
        gender, adj, occ = rng.choice("fm"), rng.choice(PERSON_ADJ), rng.choice(OCCUPATIONS)
        while occ == exclude:
            occ = rng.choice(OCCUPATIONS)
        intro, definite, ref, name = f"{article(adj)} {adj} {occ}", f"the {adj} {occ}", f"the {occ}", occ
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
        phrase = f"{article(adj)} {adj} {sing}"
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
    return f"{capitalise(other)} helps {p['him']} carry the {rng.choice(OBJECTS['thing'])[1]}."


def _unicode_sentence(rng: random.Random, p: dict, o: dict, kind: int) -> str:
    """A rare sentence that contains non-ASCII text (accents, CJK or emoji)."""
    if kind == 1:  # o is one of UNICODE_PEOPLE
        return f"{capitalise(p['he'])} talks with {_mention(o)} {rng.choice(PLACES)}."
    if kind == 2:
        return f"Next week, {p['he']} travels to {rng.choice(UNICODE_PLACES)} by train."
    if kind == 3:
        return f'A visitor greets {p["him"]} with "{rng.choice(CJK_PHRASES)}", and {p["he"]} smiles.'
    return f"{capitalise(p['he'])} draws a little {rng.choice(EMOJI)} on a note for {_mention(o)}."


def prose_document(rng: random.Random) -> str:
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
    return "\n\n".join(" ".join(capitalise(s) for s in para) for para in paragraphs)


