"""Small built-in word lists (no downloads) for needle keys and common-words extraction.

RULER draws these from the `wonderwords` package; a few hundred everyday words are enough for samples up
to about 8k tokens, and `pseudo_words` extends the vocabulary with pronounceable made-up words beyond that.
"""

from __future__ import annotations

import random

ADJECTIVES = """
able active agile amber ancient angry arctic awake bashful bitter bold brave breezy bright brisk broad
bumpy busy calm careful cheerful chilly clever cloudy clumsy cozy crisp cruel curious daring dazzling
dear deep dense dizzy drowsy dusty eager early earthy elegant empty endless faint fancy fearless fierce
firm flat fluffy fond foggy formal fragile frantic fresh friendly frosty fuzzy gentle giant gifted glad
gloomy glossy golden graceful grand greedy grumpy handy happy hardy hasty heavy hollow honest hungry icy
idle jolly jumpy keen kind lazy lively lonely loud lucky mellow merry mighty misty modest muddy narrow
neat nervous nimble noble noisy odd orange patient plain playful polite proud quaint quick quiet rapid
rare restless rich rigid rough royal rusty sandy scarce secret shaggy sharp shiny shy silent silky slim
sly smooth snowy sober soft solid sour spicy spotty steady steep sticky stormy strict sturdy subtle sunny
swift tame tender thirsty tidy tiny tough tricky vast velvet vivid wary wealthy weary wicked wild windy
wise witty wooden worried young zealous
"""

NOUNS = """
acorn anchor apple arrow attic badge bakery balcony banana barrel basket beacon beetle bell bicycle
blanket boat bonnet bottle bracelet bridge broom bucket buffalo butter button cabin cactus camel candle
canoe canyon carpet carrot castle cellar chair cherry chimney circus clock cloud clover coconut comet
compass cookie cottage crayon cricket crown cushion daisy desert diamond dolphin donkey dragon drum eagle
engine falcon feather fence ferry fiddle flag flute forest fountain fox galaxy garden garlic ginger
glacier globe goose gravel guitar hammer harbor helmet hive honey horizon igloo island jacket jelly
kettle kite ladder lagoon lantern lemon lizard lobster magnet mango marble meadow mirror mitten monkey
mountain muffin mushroom needle nest oasis ocean octopus olive orchard otter owl paddle palace panda
parrot peach pebble pencil pepper piano pillow planet pocket pony puzzle quilt rabbit raft rainbow raven
ribbon river robot rocket saddle salmon scarf shell shovel sparrow spider spoon squirrel statue stone
sugar swan teapot tiger tomato tower tractor trumpet tulip tunnel turtle umbrella valley violin volcano
wagon walnut whale whistle window wizard wolf yacht zebra
"""

VERBS = """
admire arrange bake balance borrow bounce breathe build carry chase climb collect cook crawl dance
deliver discover drift embrace explore fetch float fold gather giggle glide grow guard hike hover hum
imagine invent juggle jump kneel knit laugh launch listen march melt mend nibble notice obey organize
paint paddle pause plant polish pour praise print pull punch quarrel rescue retire ripple roam rotate
sail scatter scrub shiver sing sketch skip slide sneeze sparkle splash sprint squeeze stir stretch
swim tickle travel tumble unfold vanish wander wiggle whisper wrestle yawn zoom
"""


def _split(block: str) -> list[str]:
    return sorted(set(block.split()))


def _no_substrings(words: list[str]) -> list[str]:
    """Drop words contained in another word, so substring scoring cannot credit one for the other."""
    kept = []
    for w in words:
        if not any(w != other and w in other for other in words):
            kept.append(w)
    return kept


ADJECTIVE_LIST = _split(ADJECTIVES)
NOUN_LIST = _split(NOUNS)
VERB_LIST = _split(VERBS)
VOCABULARY = _no_substrings(sorted(set(ADJECTIVE_LIST + NOUN_LIST + VERB_LIST)))

_ONSETS = [
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "k",
    "l",
    "m",
    "n",
    "p",
    "pl",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "z",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "", "n", "r", "l", "m", "s", "x"]


def pseudo_words(n: int, rng: random.Random, avoid: list[str] | None = None) -> list[str]:
    """`n` distinct made-up words of two syllables that neither contain nor are contained in `avoid`."""
    avoid = list(avoid or [])
    seen: set[str] = set(avoid)
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(2))
        if w in seen or any(w in a or a in w for a in avoid):
            continue
        if any(w in o or o in w for o in out):
            continue
        seen.add(w)
        out.append(w)
    return out


def word_keys(rng: random.Random, n: int, exclude: set[str] | None = None) -> list[str]:
    """`n` distinct `adjective-noun` keys, RULER's word-type needle keys."""
    exclude = set(exclude or ())
    keys: list[str] = []
    while len(keys) < n:
        k = f"{rng.choice(ADJECTIVE_LIST)}-{rng.choice(NOUN_LIST)}"
        if k not in exclude and k not in keys:
            keys.append(k)
    return keys
