"""Personal facts for the conversational QA workload: what people say about themselves, and how to ask.

Each kind of fact has its own pool of values, a few first-person phrasings, a question and an answer
prefix that makes a small model answer with the value. Values are distinctive words (pet names, towns,
jobs, dishes, numbers, dates) that the small-talk filler never uses, so a fact is stated exactly once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]

SPEAKERS = [
    "Ana",
    "Ben",
    "Carla",
    "David",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Iris",
    "Jonas",
    "Keiko",
    "Liam",
    "Maya",
    "Nadia",
    "Omar",
    "Paula",
    "Ravi",
    "Sofia",
    "Tom",
    "Vera",
    "Wes",
    "Zoe",
]

PET_NAMES = [
    "Biscuit",
    "Mochi",
    "Rufus",
    "Waffles",
    "Nugget",
    "Bramble",
    "Pickles",
    "Ziggy",
    "Dottie",
    "Chutney",
    "Noodle",
    "Sprocket",
    "Juniper",
    "Bandit",
    "Gizmo",
    "Taffy",
    "Winston",
    "Mabel",
    "Pretzel",
    "Custard",
    "Rocco",
    "Fennel",
    "Tinsel",
    "Marzipan",
    "Olaf",
    "Sherlock",
]
RELATIVES = [
    "Clara",
    "Tobias",
    "Ingrid",
    "Mateo",
    "Priya",
    "Rosalind",
    "Desmond",
    "Yusuf",
    "Beatrix",
    "Leopold",
    "Marisol",
    "Anselm",
    "Odette",
    "Casimir",
    "Imogen",
    "Rafferty",
    "Lucinda",
    "Thaddeus",
    "Noemi",
    "Ezra",
]
TOWNS = [
    "Porto",
    "Lyon",
    "Galway",
    "Bergen",
    "Tucson",
    "Adelaide",
    "Krakow",
    "Valparaiso",
    "Leipzig",
    "Bilbao",
    "Tromso",
    "Halifax",
    "Dunedin",
    "Nagano",
    "Oaxaca",
    "Ghent",
    "Trieste",
    "Salzburg",
    "Bologna",
    "Tampere",
    "Gdansk",
    "Aarhus",
    "Asheville",
    "Boise",
]
DESTINATIONS = [
    "Iceland",
    "Peru",
    "Vietnam",
    "Morocco",
    "Norway",
    "Chile",
    "Japan",
    "Portugal",
    "Tanzania",
    "Mongolia",
    "Croatia",
    "Nepal",
    "Scotland",
    "Patagonia",
    "Sicily",
    "Madagascar",
    "Namibia",
    "Slovenia",
]
JOBS = [
    "pharmacist",
    "carpenter",
    "veterinarian",
    "librarian",
    "pastry chef",
    "surveyor",
    "paramedic",
    "locksmith",
    "florist",
    "translator",
    "dental hygienist",
    "sound engineer",
    "beekeeper",
    "tax advisor",
    "glassblower",
    "court reporter",
    "park ranger",
    "optician",
    "electrician",
    "cartographer",
]
FOODS = [
    "lasagna",
    "pad thai",
    "pierogi",
    "ramen",
    "paella",
    "falafel",
    "moussaka",
    "gnocchi",
    "bibimbap",
    "goulash",
    "risotto",
    "shakshuka",
    "empanadas",
    "jambalaya",
    "dumplings",
    "tiramisu",
    "enchiladas",
    "couscous",
    "biryani",
    "ratatouille",
]
INSTRUMENTS = [
    "cello",
    "banjo",
    "ukulele",
    "trombone",
    "accordion",
    "clarinet",
    "oboe",
    "mandolin",
    "saxophone",
    "bagpipes",
    "harmonica",
    "bassoon",
    "sitar",
    "xylophone",
]
LANGUAGES = [
    "Portuguese",
    "Korean",
    "Swahili",
    "Finnish",
    "Turkish",
    "Dutch",
    "Greek",
    "Polish",
    "Hungarian",
    "Tagalog",
    "Welsh",
    "Icelandic",
    "Czech",
    "Hebrew",
    "Vietnamese",
]
CARS = [
    "Volvo",
    "Subaru",
    "Skoda",
    "Peugeot",
    "Mazda",
    "Fiat",
    "Saab",
    "Citroen",
    "Renault",
    "Toyota",
    "Hyundai",
]


def _pick(pool: list[str]) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(pool)


def _date(rng: random.Random) -> str:
    return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"


@dataclass(frozen=True)
class FactKind:
    """One kind of personal fact. Templates use {v} (value), {a} (a/an before the value) and {p} (person)."""

    name: str
    value: Callable[[random.Random], str]
    statements: tuple[str, ...]
    question: str
    answer_prefix: str


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def render(template: str, value: str, person: str = "") -> str:
    return template.format(v=value, a=_article(value), p=person)


KINDS: list[FactKind] = [
    FactKind(
        "dog",
        _pick(PET_NAMES),
        (
            "My dog is called {v}.",
            "Our dog {v} chewed through another shoe this week.",
            "I finally adopted a dog, and his name is {v}.",
        ),
        "What is the name of {p}'s dog?",
        "{p}'s dog is called",
    ),
    FactKind(
        "cat",
        _pick(PET_NAMES),
        (
            "My cat is called {v}.",
            "Our cat {v} has started sleeping in the sink.",
            "We got a kitten last month and named her {v}.",
        ),
        "What is the name of {p}'s cat?",
        "{p}'s cat is called",
    ),
    FactKind(
        "hometown",
        _pick(TOWNS),
        (
            "I grew up in {v}, actually.",
            "I was born and raised in {v}.",
            "When I was a kid in {v}, we had snow every winter.",
        ),
        "Where did {p} grow up?",
        "{p} grew up in",
    ),
    FactKind(
        "job",
        _pick(JOBS),
        (
            "I work as {a} {v} these days.",
            "I have been working as {a} {v} for a few years now.",
            "My job? I am {a} {v}.",
        ),
        "What does {p} do for a living?",
        "{p} works as",
    ),
    FactKind(
        "food",
        _pick(FOODS),
        (
            "My favourite food is {v}, no contest.",
            "If I could eat one thing forever, it would be {v}.",
            "Honestly, {v} is my favourite food.",
        ),
        "What is {p}'s favourite food?",
        "{p}'s favourite food is",
    ),
    FactKind(
        "birthday",
        _date,
        ("My birthday is on {v}, so keep the date free.", "Do not forget, my birthday is on {v}."),
        "When is {p}'s birthday?",
        "{p}'s birthday is on",
    ),
    FactKind(
        "sister",
        _pick(RELATIVES),
        (
            "My sister is called {v}.",
            "My sister {v} is coming to stay with me.",
            "Did I ever mention my sister {v}? She just moved in next door.",
        ),
        "What is the name of {p}'s sister?",
        "{p}'s sister is called",
    ),
    FactKind(
        "brother",
        _pick(RELATIVES),
        (
            "My brother is called {v}.",
            "My brother {v} is visiting next month.",
            "Did I ever mention my brother {v}? He just started a band.",
        ),
        "What is the name of {p}'s brother?",
        "{p}'s brother is called",
    ),
    FactKind(
        "partner",
        _pick(RELATIVES),
        (
            "My partner {v} says hello, by the way.",
            "My partner is called {v}.",
            "I met my partner {v} at a friend's wedding.",
        ),
        "What is the name of {p}'s partner?",
        "{p}'s partner is called",
    ),
    FactKind(
        "flat",
        lambda rng: str(rng.randint(100, 999)),
        (
            "My new flat is number {v}, the one with the blue door.",
            "I live in flat {v} now, come by any time.",
        ),
        "What is the number of {p}'s flat?",
        "{p}'s flat is number",
    ),
    FactKind(
        "bike_lock",
        lambda rng: str(rng.randint(1000, 9999)),
        ("The code for my bike lock is {v}, in case I forget it.", "I changed my bike lock code to {v}."),
        "What is the code of {p}'s bike lock?",
        "The code of {p}'s bike lock is",
    ),
    FactKind(
        "trip",
        _pick(DESTINATIONS),
        ("Next summer I am going to {v}.", "We have booked a trip to {v} for next summer."),
        "Where is {p} going next summer?",
        "Next summer {p} is going to",
    ),
    FactKind(
        "instrument",
        _pick(INSTRUMENTS),
        ("I have started taking {v} lessons.", "I am learning to play the {v}."),
        "Which instrument is {p} learning to play?",
        "{p} is learning to play the",
    ),
    FactKind(
        "language",
        _pick(LANGUAGES),
        ("I am learning {v} in the evenings.", "I have been taking {v} classes twice a week."),
        "Which language is {p} learning?",
        "{p} is learning",
    ),
    FactKind(
        "car",
        _pick(CARS),
        ("I finally bought a car, a second-hand {v}.", "We traded in the old car for a {v}."),
        "What brand of car did {p} buy?",
        "{p} bought a",
    ),
    FactKind(
        "moving",
        _pick(TOWNS),
        ("We are moving to {v} in the autumn.", "I have decided to move to {v} in the autumn."),
        "Which city is {p} moving to in the autumn?",
        "In the autumn {p} is moving to",
    ),
    FactKind(
        "dentist",
        _date,
        ("My dentist appointment is on {v}.", "I have to see the dentist on {v}."),
        "When is {p}'s dentist appointment?",
        "{p}'s dentist appointment is on",
    ),
]
KIND_BY_NAME = {k.name: k for k in KINDS}

ALL_POOL_VALUES = sorted(
    set(PET_NAMES + RELATIVES + TOWNS + DESTINATIONS + JOBS + FOODS + INSTRUMENTS + LANGUAGES + CARS)
)
