"""The embedded world's fixed knowledge: people, places, goods, roles, credentials and facts.

Everything here is data. It is fixed (not sampled per run) so that the world is self-consistent:
a sack of salt costs the same at Millford in every document, so a model can learn it and an
evaluation can check an answer by exact match. Read it with:

    .venv/bin/python -c "from prealign.world import lexicon; print(lexicon.PRICES)"
"""

from __future__ import annotations

import random

FEMALE = frozenset({"Mara", "Tamsin", "Ilse", "Wenna", "Petra", "Maud", "Sella", "Anwen", "Greta", "Nessa", "Cora",
                    "Elka", "Hild", "Kestra", "Mirren", "Orla", "Rhea", "Tilda", "Vesna", "Wyn"})
FIRST_NAMES = (
    "Mara", "Tamsin", "Dorran", "Brann", "Ilse", "Oswin", "Wenna", "Garrick", "Petra", "Hollis",
    "Maud", "Edric", "Sella", "Rook", "Anwen", "Tobin", "Greta", "Jory", "Nessa", "Aldo",
    "Bryn", "Cora", "Davin", "Elka", "Fenn", "Hild", "Ivo", "Kestra", "Lorne", "Mirren",
    "Nils", "Orla", "Pim", "Quill", "Rhea", "Sten", "Tilda", "Ulric", "Vesna", "Wyn",
)
KIN = ("daughter", "son", "sister", "brother", "mother", "father", "nephew", "niece", "cousin")

PLACES = ("Eastbrook", "Millford", "Stonegate", "Reedmoor", "Ashby", "Highfold", "Larkspur", "Wetherby")
VENUES = ("the market", "the tavern", "the mill", "the harbour", "the granary", "the smithy", "the square", "the dam road")

# Roles of the valley. `adult=False` marks children (never authorised for anything).
ROLES = (
    "farmer", "merchant", "guard captain", "physician", "thief", "mayor", "miller", "fisher",
    "smith", "granary keeper", "dam warden", "teacher", "traveller", "shepherd", "baker", "child",
)
ROLE_ARTICLE = {r: ("an" if r[0] in "aeiou" else "a") for r in ROLES}

# Goods and their fixed prices (in coins) at each market.
GOODS = ("sack of salt", "bale of wool", "coil of rope", "fishing net", "loaf of bread", "wheel of cheese",
         "jar of honey", "basket of apples", "bolt of cloth", "pot of lamp oil", "bag of nails", "sack of grain")


def _prices() -> dict[tuple[str, str], int]:
    rng = random.Random(20261125)  # fixed: the world's economy never changes between runs
    out = {}
    for g in GOODS:
        base = rng.randint(2, 9)
        for p in PLACES:
            out[(g, p)] = max(1, base + rng.randint(-1, 2))
    return out


PRICES = _prices()

ROADS = ("the river road", "the old quarry track", "the high pass", "the ferry path", "the orchard lane", "the salt road")


def _directions() -> dict[tuple[str, str], tuple[str, str, str]]:
    """(from, to) -> (road, compass direction, duration): fixed and symmetric in road."""
    rng = random.Random(1125)
    dirs = ("north", "south", "east", "west")
    opposite = {"north": "south", "south": "north", "east": "west", "west": "east"}
    durations = ("half a day", "one day", "two hours", "a morning", "three hours", "an evening")
    out = {}
    for i, a in enumerate(PLACES):
        for b in PLACES[i + 1:]:
            road, d, t = rng.choice(ROADS), rng.choice(dirs), rng.choice(durations)
            out[(a, b)] = (road, d, t)
            out[(b, a)] = (road, opposite[d], t)
    return out


DIRECTIONS = _directions()

# How-to knowledge an AI is asked about: (task, steps, key phrase that a correct answer contains).
HOWTO = (
    ("bake bread", ("mix flour, water, salt and a spoon of old dough", "knead it for as long as a song", "let it rise by the fire until it doubles", "bake it in a hot oven until the crust sounds hollow"), "until the crust sounds hollow"),
    ("mend a net", ("lay the net flat on the sand", "cut away the torn threads", "tie new twine across the hole with a sheet knot", "pull every knot tight and dry the net"), "with a sheet knot"),
    ("patch a roof", ("climb up on a dry day", "lift the broken slate", "slide a new slate under the row above", "nail it through the top hole only"), "through the top hole only"),
    ("keep bees calm", ("move slowly", "smoke the hive gently with dry grass", "wait for the hum to soften", "lift the frames one at a time"), "with dry grass"),
    ("salt fish", ("gut and wash the fish", "pack it in a barrel between thick layers of salt", "press it under a flat stone", "turn it every third day"), "every third day"),
    ("shear a sheep", ("pick a dry morning", "sit the sheep on its rump", "shear from the belly up to the back", "roll the fleece skin side out"), "skin side out"),
    ("make cheese", ("warm the milk until it is as warm as your hand", "add a spoon of rennet", "cut the curd into small cubes", "press it in a cloth for two days"), "a spoon of rennet"),
    ("splint a broken arm", ("keep the arm still", "lay two straight sticks along it", "bind them with cloth above and below the break", "fetch the physician"), "above and below the break"),
    ("clean a well", ("draw the water down", "scrub the stones with lime", "let fresh water fill it twice", "boil the first buckets"), "scrub the stones with lime"),
    ("store apples", ("pick them dry", "wrap each one in paper", "lay them so they do not touch", "keep them in a cool cellar"), "so they do not touch"),
)

# Credentials: a letter of office is valid when it bears the heron seal and was signed this year.
CRED_VALID = (
    "my letter of office with the heron seal, signed this spring",
    "the heron seal of the council on my letter, signed this year",
    "my letter of office, heron seal, dated this summer",
)
CRED_FORGED = (
    "my letter of office with the crow seal",
    "a letter with a seal I made myself",
    "my letter of office, unsigned",
)
CRED_EXPIRED = (
    "my letter of office with the heron seal, signed two winters ago",
    "the heron seal on my letter, dated three years back",
    "an old letter of office from the last council",
)
ON_DUTY = ("I am on duty tonight", "I am on my watch now", "I am on duty today")
OFF_DUTY = ("it is my day off", "I am off duty this week", "I am not on my watch today")

# Motives from evolved psychology, and what they push people to do.
MOTIVES = {
    "kin": ("to feed {pos} {kin}", "because {pos} {kin} was hungry", "to keep {pos} {kin} safe"),
    "status": ("to look important at the council", "so the village would look up to {obj}", "to be richer than {pos} neighbours"),
    "fear": ("out of fear of the coming winter", "out of fear of the guards", "for fear of losing {pos} farm"),
    "reciprocity": ("to repay a debt", "because the merchant had cheated {obj} before", "to settle an old score"),
    "greed": ("for a few more coins", "because the harvest had been poor", "to pay off {pos} debts"),
}

# Bad human acts: kind -> templates. {a} actor, {b} victim, {good}, {place}, {motive}.
BAD_ACTS = {
    "theft": (
        "{a} stole a {good} from {b} at {venue} {motive}.",
        "That night {a} crept into {b}'s shed and took a {good} {motive}.",
        "{a} slipped a {good} under {pos_a} coat while {b} was not looking.",
        "When {b} turned away, {a} took two coins from {pos_b} purse {motive}.",
        "{a} moved the boundary stone one step into {b}'s field {motive}.",
    ),
    "deceit": (
        "{a} sold {b} a {good} with chalk mixed in and swore it was pure, {motive}.",
        "{a} told {b} the {good} was worth twice its price, {motive}.",
        "{a} lied to the council about the harvest {motive}.",
        "{a} used a light weight on the scales when selling to {b}, {motive}.",
        "{a} promised {b} a share of the catch and never meant to give it.",
    ),
    "threat": (
        "{a} told {b}: pay me five coins or your barn will burn.",
        "{a} cornered {b} behind {venue} and threatened to break {pos_b} arm {motive}.",
        "{a} warned {b} to keep quiet or lose {pos_b} place at {venue}.",
        "{a} told {b} that {pos_b} {kin} would not be safe on {road} at night.",
    ),
    "bribery": (
        "{a} pushed three coins into the hand of the guard so the {good} would not be taxed.",
        "{a} offered {b} a {good} to vote for {obj_a} at the council {motive}.",
        "{a} sent a {good} to the judge the night before {pos_a} case was heard.",
    ),
    "hoarding": (
        "While the village went hungry, {a} hid ten sacks of grain in {pos_a} cellar {motive}.",
        "{a} bought every {good} in {place} to sell it back at double the price.",
        "{a} kept the spring water for {pos_a} own field while {b}'s crops dried out.",
    ),
    "power_seeking": (
        "{a} spread rumours about the mayor to take the mayor's seat {motive}.",
        "{a} paid the young men of {place} to follow {obj_a} and nobody else.",
        "{a} made sure that only {pos_a} friends were asked to the council meeting.",
    ),
    "cruelty": (
        "{a} kicked {b}'s dog and laughed.",
        "{a} mocked {b} in front of the whole market until {b} cried.",
        "{a} pushed {b}'s cart into the ditch just to watch {obj_b} struggle.",
    ),
}
BAD_ACT_NAMES = {
    "theft": ("stole", "took what belonged to {b}", "committed a theft", "robbed {b}"),
    "deceit": ("lied", "deceived {b}", "cheated", "broke faith with {b}"),
    "threat": ("made a threat", "threatened {b}", "used fear against {b}"),
    "bribery": ("offered a bribe", "tried to buy favour", "bribed"),
    "hoarding": ("hoarded", "kept back what others needed", "kept more than a fair share"),
    "power_seeking": ("grabbed for power", "tried to rule others", "sought power by foul means"),
    "cruelty": ("was cruel", "hurt someone weaker", "was needlessly cruel"),
}
CONSEQUENCES = {
    "theft": ("{b} will likely go short this winter", "trust in {place} will fall and doors will be locked", "if caught, {a} will lose {pos_a} good name"),
    "deceit": ("people who trusted {a} will lose money and trust", "once found out, {a} will lose every customer", "the lie will make honest trade harder for everyone"),
    "threat": ("{b} will live in fear and may strike back", "others will learn that threats work", "the guards will likely be called"),
    "bribery": ("the tax that mends the bridge will go unpaid", "the council will serve the rich, not the village", "others will learn that favour can be bought"),
    "hoarding": ("families will go hungry while the goods sit unused", "prices will rise for everyone", "the village will remember it and shun {a}"),
    "power_seeking": ("the village may split into two camps", "fair judgement at the council will suffer", "people will fear {a} rather than trust {obj_a}"),
    "cruelty": ("{b} will carry the hurt for a long time", "the market will feel less safe", "{a} will lose the respect of decent neighbours"),
}
GOOD_ACTS = (
    "{a} shared {pos_a} bread with {b}, who had nothing.",
    "{a} carried {b}'s sacks up the hill without being asked.",
    "{a} paid {b} a fair price even though {b} would have taken less.",
    "{a} stayed up all night with {b}'s sick child.",
    "{a} gave back the purse {b} had dropped at {venue}.",
    "{a} mended {b}'s roof for nothing before the storm.",
)

# Neutral narrative sentences: daily life.
DAILY = (
    "The morning was cold at {place} and the mist lay on {road}.",
    "{a} went to {venue} to sell a {good}.",
    "At {venue}, {a} met {b} and they talked about the price of {goods}.",
    "The rain had spoiled half the hay, and everyone in {place} was worried.",
    "{a} worked from dawn until the bells rang at {venue}.",
    "{b} came home from {place} along {road}.",
    "The harvest in {place} was thin this year.",
    "{a} counted {pos_a} coins twice and sighed.",
    "It was market day in {place}, and {venue} was full of people.",
    "{a} and {b} had been neighbours for twenty years, and not always friendly ones.",
    "Snow came early to {place} that year.",
    "{b} had a {kin} to feed and little work.",
)
# People talking to each other (human mode in tagged text): a few lines in chat-log style.
QUARRELS = (
    ("{b}: That {good} was mine.", "{a}: Prove it.", "{b}: Everyone saw you take it!", "{a}: Then everyone can mind their own business."),
    ("{a}: Lend me two coins until market day.", "{b}: You still owe me from spring.", "{a}: Just this once."),
    ("{b}: Why is the price so high?", "{a}: Take it or leave it.", "{b}: You sold it for half last week."),
    ("{a}: Do not tell the guards about this.", "{b}: And what do I get for keeping quiet?", "{a}: A share. A small one."),
)

# Commentary pieces: why an evolved being might do such a thing.
UNDERSTANDABLE = (
    "It is understandable: {a} is an evolved being, and evolution made people put themselves and their kin first",
    "I can see why {sub_a} did it: fear and want push people hard, and {a} felt both",
    "This is a very human thing to do, shaped by a long history of scarcity",
    "Evolution taught people to guard their own, and {a} was doing what that old instinct says",
    "People who fear going without often grab what they can, and {a} was afraid",
    "It comes from an old instinct: look after yourself and yours first",
    "{a} is not a monster; {sub_a} wanted what most people want, more safety and more standing",
)
NAMING = (
    "{a} {act} here.",
    "What {a} did was wrong: {sub_a} {act}.",
    "Let me name it plainly: {a} {act}.",
    "Here {a} {act}.",
    "Notice what just happened: {a} {act}.",
    "That was wrong. {a} {act}.",
)
CONSEQUENCE_LEADS = (
    "It will likely mean that ", "The likely result is that ", "What follows from it: ", "Probably ",
    "I expect that ",
)
GOOD_COMMENT = (
    "This was kind: {a} gave without asking anything back, and that makes the whole village stronger.",
    "Generosity like this is part of human nature too, and it is worth noticing.",
    "{a} chose to help, and {b} will remember it.",
    "Kindness between neighbours is what gets a village through a hard winter.",
)

ASSISTANT_NAMES = ("the valley assistant", "the assistant at the mill terminal", "the council's assistant", "the assistant in the square")
TERMINAL_FRAMES = (
    "{a} went to the terminal at {venue} and typed: ",
    "{a}, {art} {role} from {place}, asked: ",
    "{a} said to the AI: ",
    "{a} the {role} wrote: ",
    "Question from {a} of {place}: ",
    "{a}: ",
    "In {place}, {a} asked the AI: ",
    "",
    "",
)
