"""Word lists and small text helpers shared by the corpus generators.

Lists (not sets) everywhere: iteration order must never depend on hashing.
"""

from __future__ import annotations


def word_list(text: str) -> list[str]:
    """Split a whitespace-separated word list (keeps the lists compact)."""
    return text.split()


def noun_pairs(text: str) -> list[tuple[str, str]]:
    """Parse "singular/plural" entries into (singular, plural) tuples."""
    return [tuple(item.split("/")) for item in text.split()]  # type: ignore[misc]

# ---------------------------------------------------------------- word lists
# Lists (not sets) everywhere: iteration order must never depend on hashing.
FEMALE_NAMES = word_list("Mia Anna Lucy Emma Nora Ruth Clara Ella Maya Iris Hannah Rosa Leah Alice Grace Julia")
MALE_NAMES = word_list("Tom Leo Sam Ben Max Hugo Oscar Felix Adam Noah Jack Omar Victor Peter Daniel Ivan")
NAMES: list[tuple[str, str]] = [(n, "f") for n in FEMALE_NAMES] + [(n, "m") for n in MALE_NAMES]
# Used only in the rare Unicode documents.
UNICODE_NAMES = [("Zoë", "f"), ("José", "m"), ("Chloé", "f"), ("Søren", "m"), ("Björn", "m"),
                 ("Renée", "f"), ("Łukasz", "m"), ("Inès", "f"), ("Jürgen", "m"), ("Siân", "f")]
UNICODE_PEOPLE = ["Dr. Ångström", "Mr. Müller", "Ms. Núñez", "Mr. Øberg"]
UNICODE_PLACES = word_list("Kraków Zürich Malmö Reykjavík Göttingen Besançon Tromsø Łódź")
CJK_PHRASES = ["你好", "谢谢", "こんにちは", "안녕하세요", "早上好"]
EMOJI = ["🙂", "🌞", "🍎", "🐟", "📚", "🌧", "🚲", "🎵"]
PRONOUNS = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}  # subject, object, possessive

OCCUPATIONS = word_list("baker teacher farmer painter doctor sailor gardener carpenter potter weaver nurse "
                 "librarian tailor miller shepherd builder musician merchant student poet cook "
                 "driver clockmaker beekeeper fisher blacksmith")
PERSON_ADJ = word_list("quiet young old cheerful tired clever patient busy kind curious brave careful "
                "friendly shy honest gentle proud calm eager polite")
# Objects are grouped so that verbs and adjectives match their nouns.
OBJECTS = {
    "food": noun_pairs("apple/apples pear/pears cake/cakes pie/pies loaf/loaves fish/fish egg/eggs "
                   "plum/plums onion/onions cherry/cherries potato/potatoes carrot/carrots lemon/lemons"),
    "tool": noun_pairs("hammer/hammers rope/ropes ladder/ladders bucket/buckets lantern/lanterns "
                   "shovel/shovels needle/needles brush/brushes kettle/kettles saw/saws"),
    "text": noun_pairs("book/books letter/letters map/maps note/notes poem/poems recipe/recipes "
                   "newspaper/newspapers postcard/postcards story/stories"),
    "thing": noun_pairs("box/boxes chair/chairs flower/flowers stone/stones shell/shells coat/coats "
                    "hat/hats bottle/bottles blanket/blankets cup/cups bowl/bowls basket/baskets"),
}
OBJECT_VERBS = {
    "food": word_list("buys sells carries cooks shares washes counts wraps slices"),
    "tool": word_list("carries repairs cleans borrows finds packs holds sharpens"),
    "text": word_list("reads writes finds folds copies sends studies hides"),
    "thing": word_list("carries paints finds cleans moves sells buys wraps polishes"),
}
OBJECT_ADJ = {
    "food": word_list("fresh ripe warm sweet small large tasty golden"),
    "tool": word_list("old heavy rusty new long sturdy sharp"),
    "text": word_list("long short old strange funny secret"),
    "thing": word_list("blue tiny clean new yellow pretty heavy lovely"),
}
PLACES = ["near the harbour", "at the market", "in the garden", "by the river", "behind the library",
          "in the kitchen", "on the hill", "at the station", "in the village square",
          "under the old bridge", "beside the mill", "in the forest", "at the bakery",
          "on the beach", "in the workshop", "near the school", "at the edge of the field"]
DESTINATIONS = word_list("market harbour library school farm bakery mill station park bridge museum")
TIMES = ["In the morning", "Every evening", "On Sunday", "After lunch", "At noon", "Early today",
         "Before sunrise", "On a cold afternoon", "Last winter", "One spring day", "At dusk"]
CONNECTIVES = word_list("Later Then Afterwards Meanwhile Soon Suddenly Finally") + ["After that", "A little later"]
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
NUMBER_WORDS = word_list("two three four five six seven eight nine ten")
CONTAINERS = noun_pairs("bag/bags box/boxes basket/baskets jar/jars crate/crates")


def article(word: str) -> str:
    """Indefinite article; the adjectives and nouns avoid silent-h / "you" sounds."""
    return "an" if word[0].lower() in "aeiou" else "a"


def capitalise(text: str) -> str:
    """Upper-case the first character only (names inside stay as they are)."""
    return text[:1].upper() + text[1:]


