"""Chit-chat with distractors: filler that names people, places, numbers and dates that are not the facts.

A compressor that keeps "the only proper nouns and numbers" of a conversation would look good on filler
that names nothing. Real chats mention colleagues, cities, bus numbers, prices and other people's
birthdays, so these exchanges do too, in the same surface forms as the facts asked (a third party's dog,
flat number, door code or birthday). Their values come from pools disjoint from every fact pool and from
the speakers' names (checked by tests, substrings included); drawn numbers and dates can collide with an
answer, so the conversation generator redraws any exchange whose text contains an answer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from kvpilot.workloads.convqa_facts import MONTHS

OTHER_PEOPLE = [
    "Greta", "Marco", "Hannah", "Dmitri", "Lucia", "Felix", "Amara", "Jasper", "Nina", "Oscar", "Petra",
    "Quentin", "Lotte", "Stefan", "Talia", "Viktor", "Wanda", "Yara", "Bruno", "Celeste", "Dario", "Esme",
    "Gideon", "Helga", "Ivo", "Jolene", "Kasper", "Lorenzo", "Mirela", "Nils", "Ottilie", "Pavel", "Rhea",
    "Silas", "Ulla", "Xavier", "Agnes", "Boris", "Cosima", "Emil",
]
PLACES = [
    "Lisbon", "Vienna", "Toronto", "Seville", "Rotterdam", "Geneva", "Marseille", "Brisbane", "Quebec",
    "Cork", "Stavanger", "Antwerp", "Munich", "Turin", "Malmo", "Sapporo", "Cusco", "Zanzibar", "Tbilisi",
    "Riga", "Zagreb", "Montreal", "Denver", "Cardiff", "Kyoto", "Oslo", "Bruges", "Verona", "Uppsala",
    "Innsbruck", "Cairo", "Nairobi", "Wellington", "Hobart", "Jaipur", "Hanoi",
]
OTHER_PETS = [
    "Pepper", "Shadow", "Buttons", "Sparky", "Clementine", "Muffin", "Ringo", "Domino", "Hazel", "Tofu",
    "Pumpkin", "Scout", "Bingo", "Velvet", "Cinnamon", "Archie", "Lulu", "Peanut",
]

_NAMED: dict[str, list[str]] = {"person": OTHER_PEOPLE, "city": PLACES, "pet": OTHER_PETS}
_DRAWN: dict[str, Callable[[random.Random], str]] = {
    "n2": lambda r: str(r.randint(12, 95)),
    "n3": lambda r: str(r.randint(100, 999)),
    "n4": lambda r: str(r.randint(1000, 9999)),
    "date": lambda r: f"{r.choice(MONTHS)} {r.randint(1, 28)}",
    "clock": lambda r: f"{r.randint(6, 11)}:{r.choice(['05', '15', '20', '30', '40', '45', '50'])}",
}
_SLOT = re.compile(r"\{(person|city|pet|n2|n3|n4|date|clock)(\d?)\}")

# Exchanges that mention third parties, places and numbers; lines alternate between the two speakers and
# {o} is the person spoken to. A slot repeated in one exchange ({person} twice) is the same value;
# {person2} is another one.
DISTRACTOR_EXCHANGES: list[tuple[str, ...]] = [
    ("My colleague {person} just moved to {city}.", "Wow, that is a big change. Does {person} like it?",
     "So far, apparently. The rent is much cheaper."),
    ("{person}'s dog is called {pet}, and it barked at me for ten minutes.", "Ha, small dogs are the loudest."),
    ("I took the {n3} bus {when} and it was late again.", "That line is always late. Try the train."),
    ("{person} is turning {n2} on {date}.", "Are they having a party?", "Something small, at home."),
    ("The code for the office door is {n4} now, they changed it.", "Again? They change it every month."),
    ("{person} got back from {city} {when}.", "Lucky. How was it?", "{Opinion}, by the sound of it."),
    ("I paid {n3} for the car repair.", "Ouch. Was it the brakes?", "The brakes and something else."),
    ("My train leaves at {clock} tomorrow.", "That is early. Set two alarms."),
    ("{person} and {person2} are organising a quiz night.", "When is it?", "On {date}, I think."),
    ("There is a conference in {city} I might go to.", "For work? That sounds {nice}."),
    ("{person} lives in flat {n3}, right below the noisy neighbours.", "Poor {person}. Have they complained?"),
    ("I ran {n2} kilometres last week.", "Impressive. I barely walked to the corner shop."),
    ("Have you heard from {person} lately?", "Only a postcard from {city}.", "Typical {person}."),
    ("{person}'s cat {pet} got stuck on the roof again.", "Did they call someone?",
     "The neighbour got it down with a ladder."),
    ("The quote for the new windows was {n4}.", "That is a lot. Get a second quote."),
    ("Our team moved to floor {n2}.", "Nice view at least?", "Of the car park, yes."),
    ("{person} wants to start a book club.", "Count me in if it is not on a Monday."),
    ("I met a woman from {city} at {city2} airport.", "Small world. What was she doing there?",
     "Visiting her grandmother, like me."),
    ("My cousin's wedding is on {date}.", "Are you going?", "I have to. I am giving a speech."),
    ("{person} lent me a book about {city}.", "Is it any good?", "It is {opinion}, honestly."),
    ("Parking near {city} costs {n2} an hour now.", "That is robbery."),
    ("I think {person} is learning to drive.", "Brave. I hope {person} has a patient teacher."),
    ("The meeting moved to {clock}.", "Fine by me. I will bring coffee."),
    ("{person} called me from {city} at midnight.", "Everything alright?", "Just the time difference."),
    ("Our landlord wants the rent by {date}.", "Earlier than usual, no?", "Yes, no idea why."),
    ("{person}'s new number ends in {n4}.", "I will save it. Thanks."),
    ("We are thinking of a weekend in {city}.", "Go in spring, it is lovely then."),
    ("{person} bought a puppy and named it {pet}.", "Cute name. What breed?", "No idea, a fluffy one."),
    ("The repair shop on {city} Road says it will take {n2} days.", "That is ages for a {thing}."),
    ("Apparently {person} ran into {person2} in {city}.", "Of all places!"),
    ("I booked a table for {clock} on Friday.", "Perfect. Who else is coming?", "{person} and {person2}."),
    ("The school reunion is on {date}.", "Will {person} be there?", "Probably, {person} organised it."),
    ("My neighbour {person} has {n2} plants on one balcony.", "That is a jungle, not a balcony."),
    ("There were {n3} people at the concert {when}.", "In that small hall? It must have been packed."),
    ("{person} from work says hi, {o}.", "Say hi back! Is {person} still in {city}?", "Still there."),
    ("Our flight from {city} was delayed {n2} minutes.", "Not too bad, considering."),
    ("{person} finally fixed the {thing}.", "After how long?", "About {n2} days of complaining."),
    ("I saw a flat in {city} for {n3} a week.", "Tempting, but far from everything."),
    ("{person}'s birthday dinner is on {date}, at the usual place.", "I will be there. Should I bring anything?"),
    ("Bread at the bakery costs {n2} cents more than last year.", "Everything is going up."),
]


def fill_exchange(lines: tuple[str, ...], rng: random.Random) -> tuple[list[str], list[str]]:
    """Fill the distractor slots of an exchange (same slot, same value) and return (lines, values used).

    Ordinary small-talk slots and {o} are left for `smalltalk.fill`.
    """
    chosen: dict[str, str] = {}

    def draw(m: re.Match[str]) -> str:
        key = m.group(0)
        if key not in chosen:
            kind = m.group(1)
            taken = set(chosen.values())
            for _ in range(100):
                value = rng.choice(_NAMED[kind]) if kind in _NAMED else _DRAWN[kind](rng)
                if value not in taken:
                    break
            chosen[key] = value
        return chosen[key]

    filled = [_SLOT.sub(draw, line) for line in lines]
    return filled, sorted(set(chosen.values()))


def distractor_pool_values() -> list[str]:
    """Every named distractor value (people, places, pets), for tests against the fact pools."""
    return sorted(set(OTHER_PEOPLE + PLACES + OTHER_PETS))
