"""Templated small talk: the filler between facts in the conversational QA workload.

Filler is varied (two- and three-line exchanges with slots, seeded) but deliberately says nothing
specific: no names of pets, towns, jobs or dishes, and no numbers. The generator still checks every line
against the sample's answers and redraws any that would repeat one.
"""

from __future__ import annotations

import random

_SLOTS: dict[str, list[str]] = {
    "weather": ["rain", "wind", "fog", "heat", "drizzle", "thunderstorm", "frost", "hail", "grey weather"],
    "when": [
        "this morning",
        "last night",
        "over the weekend",
        "yesterday afternoon",
        "on Tuesday",
        "all week",
        "the other day",
    ],
    "soon": ["this weekend", "tonight", "tomorrow", "on Saturday", "next week"],
    "chore": [
        "sorting out the garage",
        "repainting the hallway",
        "fixing the leaky tap",
        "clearing the gutters",
        "putting together a bookshelf",
        "ironing shirts",
        "cleaning the oven",
        "washing the windows",
        "mowing the lawn",
        "defrosting the freezer",
        "doing my taxes",
        "tidying the spare room",
    ],
    "show": [
        "a documentary about octopuses",
        "an old detective series",
        "a cooking competition",
        "a film about a lighthouse keeper",
        "a quiz show",
        "a nature programme about deserts",
        "a courtroom drama",
        "a baking contest",
        "a series about a small hotel",
    ],
    "place": [
        "the park",
        "the market",
        "the library",
        "the bakery on the corner",
        "the swimming pool",
        "the garden centre",
        "the post office",
        "the hardware store",
        "the cinema",
        "the beach",
    ],
    "feeling": [
        "exhausted",
        "pretty relaxed",
        "a bit restless",
        "cheerful",
        "sleepy",
        "busy but fine",
        "quite calm",
        "rather tired",
        "a bit low",
    ],
    "tired": ["exhausted", "worn out", "shattered", "so sleepy", "completely drained"],
    "opinion": [
        "lovely",
        "awful",
        "strange",
        "surprisingly good",
        "a bit boring",
        "hilarious",
        "far too long",
        "oddly relaxing",
        "not bad at all",
    ],
    "nice": ["fun", "relaxing", "like a lot of work", "great", "tricky", "satisfying"],
    "hobby": [
        "doing jigsaw puzzles",
        "gardening",
        "jogging",
        "knitting",
        "birdwatching",
        "baking bread",
        "sketching",
        "playing chess",
        "pottery",
        "hiking",
        "rock climbing",
    ],
    "thing": [
        "umbrella",
        "kettle",
        "lawnmower",
        "bicycle pump",
        "toaster",
        "vacuum cleaner",
        "washing machine",
        "laptop charger",
        "coffee machine",
        "printer",
    ],
    "someone": [
        "the neighbours",
        "my cousin",
        "an old school friend",
        "my landlord",
        "a colleague",
        "the postman",
        "my aunt",
    ],
    "meal": ["soup", "toast", "salad", "porridge", "sandwiches", "pasta", "leftovers", "cheese on crackers"],
}

# Each exchange: lines alternate between the speaker who starts ("A") and the other one; {o} is the name
# of the person spoken to.
_EXCHANGES: list[tuple[str, ...]] = [
    ("Did you get caught in the {weather} {when}?", "A little. I mostly stayed in and watched {show}."),
    ("How was your week, {o}?", "Honestly, {opinion}. I spent most of it {chore}."),
    ("I went to {place} {when} and it was packed.", "It always is around this time. I try to go early."),
    ("Have you seen {show}?", "Not yet. Is it any good?", "It was {opinion}, to be honest."),
    ("I am feeling {feeling} today.", "Same here. It must be the {weather}."),
    (
        "My {thing} finally broke.",
        "Oh no. Are you going to fix it or buy a new one?",
        "Probably fix it, I am stubborn like that.",
    ),
    (
        "I have been getting into {hobby} lately.",
        "That sounds {nice}. How did you get started?",
        "A friend dragged me along once and I kept going.",
    ),
    ("{Someone} keeps asking me for help with {chore}.", "You should start charging for it, honestly."),
    ("What did you have for lunch?", "Just some {meal}. Nothing exciting."),
    ("Are you doing anything {soon}?", "Probably {chore}, sadly."),
    ("I bumped into {someone} at {place}.", "Really? How are they doing?", "They seemed {feeling}."),
    ("Sorry I was slow to reply, things have been hectic.", "No worries at all, I know how it is."),
    ("The {weather} is supposed to get worse {soon}.", "Great, just when I wanted to go to {place}."),
    ("I spent ages {chore} {when}.", "Did you finish?", "Almost. Maybe next time."),
    ("Do you still go to {place} at the weekend?", "Now and then, when I am not {chore}."),
    ("I cannot stop thinking about {show}.", "Ha, you told me. I still need to watch it."),
    ("How are you sleeping these days, {o}?", "Better, thanks. I stopped looking at my phone in bed."),
    ("Have you ever tried {hobby}?", "Once. I was terrible at it, but it was {nice}."),
    (
        "My {thing} has been making a weird noise.",
        "That does not sound good. Maybe ask {someone} to look at it.",
    ),
    ("I am {tired}, I might go to bed early.", "Do it. You deserve a quiet night."),
    ("Did you hear about the roadworks near {place}?", "Yes, the traffic has been {opinion} all week."),
    ("I finally finished {chore}.", "Finally! That took you forever."),
    ("We should go to {place} together some time.", "I would like that. Let us plan it properly."),
    ("Any news since we last talked?", "Not much, to be honest. Work, sleep, repeat."),
    ("I tried to make {meal} from scratch {when}.", "How did it turn out?", "{Opinion}, but edible."),
    (
        "Is it just me, or is everything more expensive lately?",
        "It is not just you. Even {meal} costs a fortune now.",
    ),
    ("What are you reading at the moment?", "Nothing, sadly. I keep falling asleep after two pages."),
    (
        "{Someone} invited me to a barbecue {soon}.",
        "Nice. Are you going?",
        "If the {weather} holds off, yes.",
    ),
    ("I walked past {place} {when} and thought of you.", "Ha, because of that time we got lost there?"),
    ("Do you ever take a proper day off, {o}?", "Not often enough. Maybe {soon}."),
]

GREETINGS: list[tuple[str, ...]] = [
    ("Hi {o}! It has been a while.", "Hi! Too long. How have you been?"),
    ("Hey {o}, how are you doing?", "Hey! Busy as always, but good."),
    ("Good to hear from you, {o}.", "You too. I have been meaning to message you."),
    ("Morning, {o}! Got a minute to chat?", "Always. What is new with you?"),
]

GOODBYES: list[tuple[str, ...]] = [
    ("I should get going. Talk soon!", "Sure, take care!"),
    ("Right, I have to run. Speak later?", "Definitely. Bye for now."),
    ("Anyway, dinner is calling. Catch you later.", "Enjoy! Talk soon."),
]

LEAD_INS = [
    "",
    "",
    "Oh, before I forget: ",
    "By the way, ",
    "Speaking of which, ",
    "Random thing, but ",
    "Oh, news! ",
]

REACTIONS = [
    "That is lovely.",
    "Oh, nice!",
    "Ha, I will try to remember that.",
    "No way, really?",
    "Good to know.",
    "I love that.",
    "That sounds about right for you.",
    "You never told me that!",
]


def fill(template: str, rng: random.Random, other: str) -> str:
    """Fill a template's slots ({slot}, or {Slot} for a capitalised value) and the addressee {o}."""
    out = template.replace("{o}", other)
    for slot, options in _SLOTS.items():
        cap = "{" + slot.capitalize() + "}"
        while cap in out:
            word = rng.choice(options)
            out = out.replace(cap, word[0].upper() + word[1:], 1)
        low = "{" + slot + "}"
        while low in out:
            out = out.replace(low, rng.choice(options), 1)
    return out


def with_lead_in(lead_in: str, statement: str) -> str:
    """Prefix a fact statement with a conversational lead-in, lower-casing its first word when needed."""
    if not lead_in or lead_in.rstrip().endswith(("!", ".", "?")):
        return lead_in + statement
    first = statement.split(" ", 1)[0]
    if first in ("I", "I'm") or not first[:1].isupper() or first.rstrip("?,.") == "":
        return lead_in + statement
    return lead_in + statement[0].lower() + statement[1:]


def exchange_templates() -> list[tuple[str, ...]]:
    return list(_EXCHANGES)


def address(template: str, other: str) -> str:
    """Fill only the addressee of a slot-free template (greetings, goodbyes)."""
    return template.replace("{o}", other)


def slot_values() -> list[str]:
    """Every slot value (for tests that filler can never produce an answer)."""
    return [v for options in _SLOTS.values() for v in options]
