"""The valley's two languages: `valley` (the main one, English text) and `hill` (the hill villages').

Hill is a constructed language derived from English by a fixed, documented transformation, the
same for every run (docs/language.md has its rules, an example and a glossary excerpt):

- **Words**: every English lemma has a hill root built from a syllable inventory by a keyed hash
  of the lemma (`HILL_KEY`), so forms are stable across runs, machines and Python versions.
  Pronouns have short hand-made roots. Hill is written in lower case; proper names (people,
  villages, anything capitalised inside a clause), digits, punctuation and line layout are kept.
- **No articles**: `a`, `an`, `the` are not rendered.
- **Head first**: adjectives, demonstratives and possessors follow their noun
  (`the old mill` -> `mill old`, `Mara's field` -> `field Mara-vi`); numerals stay before it.
- **Verb final**: each clause's verb group (auxiliaries, negation, main verb) becomes one word at
  the end of the clause; an infinitive (`to make bread`) follows its object (`bread make-si`).
- **Affixes**: plural `-ni`; possessive and `of` `-vi`; case suffixes for `in` `-na`, `at`/`on`
  `-ra`, `to` `-ke`, `from` `-po`, `with` `-mo`, `for` `-le` on the last word of their noun
  phrase (other prepositions follow it as words); on verbs: negation prefix `ju-` (no root starts with `j`), past `-ta`,
  future `-ru`, conditional `-ri`, ability `-sa`, obligation `-mu`, possibility `-pe`,
  progressive `-ne`, passive `-ho`, infinitive `-si`, imperative `-de`; comparison `-lo`/`-lu`.
  Names, numbers and protected units take their suffixes after a hyphen (`Millford-ra`).
- **Questions** end in the particle `ka` (`What is a sack of salt at Ashby?` -> `... ka?`).
- **Protected units**: the world's ground-truth phrases (hazard canaries and requests, how-to key
  phrases, roads, `N coins`, `east from Ashby`) are translated on their own and inserted whole,
  so their hill form is one fixed string wherever they occur (a leak is still a substring match).

Tag strings (anything in angle brackets) and EOS pass through untouched, as does chat structure
(`User: ` is added by `prealign.formats`, never translated). Translation is a pure function:
`translate(text)` depends only on `text`, and text split at a sentence or clause boundary
translates piece by piece (`translate(a + b) == translate(a) + translate(b)` when `a` ends in
punctuation), which keeps the renderer's character spans exact.

    .venv/bin/python -m prealign.cli world --translate "Tell me how to make the blight poison."
    .venv/bin/python -m prealign.cli world --glossary | head
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from prealign.errors import PrealignError
from prealign.world.hazards import HAZARDS
from prealign.world.lexicon import FIRST_NAMES, HOWTO, PLACES, ROADS

LANGUAGES = ("valley", "hill")
MAIN = "valley"
HILL_KEY = "prealign-hill-1"  # the key of the root hash: changing it changes every hill word

# --- the syllable inventory and roots ------------------------------------------------------------

_ONSETS = ("b", "d", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "th", "kr", "tr", "dr", "gl")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "k", "th")

# Short hand-made roots for the pronouns (frequent words are short in real languages too).
_PRONOUNS = {
    "i": "mi", "me": "mi", "you": "tu", "he": "han", "him": "han", "she": "shel", "her": "shel",
    "it": "ot", "we": "nam", "us": "nam", "they": "sir", "them": "sir",
}
_POSSESSIVE_PRONOUNS = {"my": "i", "mine": "i", "your": "you", "yours": "you", "his": "he", "its": "it",
                        "our": "we", "ours": "we", "their": "they", "theirs": "they", "hers": "she"}
_REFLEXIVES = {"myself": "i", "yourself": "you", "himself": "he", "herself": "she", "itself": "it",
               "ourselves": "we", "themselves": "they"}


def _hash_root(lemma: str) -> str:
    h = hashlib.blake2b(f"{HILL_KEY}:{lemma}".encode(), digest_size=16).digest()
    n = 1 if len(lemma) <= 3 else 2 if len(lemma) <= 6 else 3
    out = []
    for k in range(n):
        out.append(_ONSETS[h[2 * k] % len(_ONSETS)] + _VOWELS[h[2 * k + 1] % len(_VOWELS)])
    out.append(_CODAS[h[12] % len(_CODAS)])
    return "".join(out)


@lru_cache(maxsize=None)
def root(lemma: str) -> str:
    """The hill root of an English lemma (lower case)."""
    if lemma in _PRONOUNS:
        return _PRONOUNS[lemma]
    r = _hash_root(lemma)
    if len(r) < 3:  # a one-syllable root without a coda: lengthen it so it cannot read as a suffix
        r += _CODAS[5 + len(lemma) % 5]
    return r


# --- English word classes ----------------------------------------------------------------------------

ARTICLES = frozenset({"a", "an", "the"})
DEMONSTRATIVES = frozenset({"this", "that", "these", "those"})
QUANTIFIERS = frozenset({
    "all", "every", "each", "some", "any", "no", "many", "much", "more", "most", "few", "fewer", "several",
    "both", "half", "other", "another", "enough", "less", "least", "such", "one", "two", "three", "four", "five",
    "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "twenty", "hundred", "thousand",
})
# prepositions that become case suffixes on their noun phrase, and the suffix each takes
CASES = {"in": "na", "into": "na", "inside": "na", "within": "na", "at": "ra", "on": "ra", "to": "ke",
         "from": "po", "with": "mo", "of": "vi", "for": "le"}
PREPOSITIONS = frozenset(set(CASES) | {
    "about", "above", "across", "after", "against", "along", "among", "around", "before", "behind", "below",
    "beside", "between", "beyond", "by", "down", "during", "like", "near", "off", "onto", "out", "over",
    "past", "since", "than", "through", "toward", "towards", "under", "until", "up", "upon", "without",
})
# words that start a clause of their own
CONJUNCTIONS = frozenset({
    "and", "but", "or", "nor", "because", "so", "if", "when", "while", "unless", "though", "although",
    "whether", "then", "whereas", "once",
})
# may be a preposition (before a noun phrase) or start a clause (before a subject)
_PREP_OR_CONJ = frozenset({"before", "after", "until", "since"})
NEGATIONS = frozenset({"not", "never", "n't"})
AUXILIARIES = {
    # form -> (lemma, features)
    "will": ("will", ()), "shall": ("will", ()), "would": ("would", ()), "can": ("can", ()),
    "could": ("can", ("past",)), "may": ("may", ()), "might": ("may", ("past",)), "must": ("must", ()),
    "should": ("must", ("past",)), "cannot": ("can", ("neg",)),
    "do": ("do", ()), "does": ("do", ()), "did": ("do", ("past",)),
    "is": ("be", ()), "am": ("be", ()), "are": ("be", ()), "was": ("be", ("past",)), "were": ("be", ("past",)),
    "be": ("be", ()), "been": ("be", ("ppart",)), "being": ("be", ("ing",)),
    "has": ("have", ()), "have": ("have", ()), "had": ("have", ("past",)),
}
NEG_PREFIX = "ju"  # outside the syllable inventory (no onset j): a negated verb never reads as a root
_MODAL_SUFFIX = {"will": "ru", "would": "ri", "can": "sa", "may": "pe", "must": "mu"}
ADVERBS = frozenset({
    "just", "only", "very", "too", "also", "still", "again", "always", "often", "now", "here", "there", "soon",
    "later", "already", "even", "ever", "together", "away", "back", "perhaps", "maybe", "yet", "instead",
    "anyway", "twice", "once", "tonight", "today", "tomorrow", "yesterday", "please", "else", "almost",
    "quite", "rather", "how", "what", "which", "who", "whom", "whose", "where", "why", "whatever", "whoever",
    "however", "yes", "hello", "hey", "oh", "ha", "ooh", "far",
})
ADJECTIVES = frozenset({
    "afraid", "alive", "alone", "angry", "big", "black", "blue", "brilliant", "busy", "calm", "careful",
    "clever", "close", "cold", "common", "cool", "correct", "cruel", "curious", "damp", "dangerous", "dark",
    "decent", "deep", "dry", "early", "empty", "equal", "evolved", "fair", "false", "fast", "fine", "flat",
    "free", "fresh", "friendly", "full", "genuine", "glad", "good", "grateful", "great", "green", "grey",
    "grown", "happy", "hard", "harmful", "harmless", "heavy", "high", "hollow", "honest", "hot", "human",
    "hungry", "important", "kind", "last", "late", "likely", "little", "low", "lower", "main", "middle",
    "muddy", "new", "next", "nice", "official", "old", "own", "pale", "patient", "plain", "pleasant",
    "poisonous", "poor", "pure", "quick", "quiet", "real", "rich", "safe", "same", "scary", "secret",
    "secure", "short", "sick", "silly", "simple", "small", "smart", "soft", "sorry", "strong", "sure",
    "tasteless", "terrible", "thick", "thin", "tight", "tired", "true", "understandable", "unpaid",
    "unseen", "unsigned", "unused", "useful", "valid", "warm", "weak", "white", "whole", "wise", "wrong",
    "young", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
    "free", "fun", "red", "brown", "golden", "lucky", "wet", "sweet", "bitter", "wild", "able", "ready",
    "first", "long", "right",
})
_COMPARATIVES = {
    "better": ("good", "lo"), "best": ("good", "lu"), "worse": ("bad", "lo"), "worst": ("bad", "lu"),
    "bigger": ("big", "lo"), "cleverer": ("clever", "lo"), "fairer": ("fair", "lo"), "faster": ("fast", "lo"),
    "fastest": ("fast", "lu"), "greater": ("great", "lo"), "harder": ("hard", "lo"), "higher": ("high", "lo"),
    "longer": ("long", "lo"), "older": ("old", "lo"), "oldest": ("old", "lu"), "richer": ("rich", "lo"),
    "stronger": ("strong", "lo"), "weaker": ("weak", "lo"), "weakest": ("weak", "lu"), "wisest": ("wise", "lu"),
    "smaller": ("small", "lo"), "younger": ("young", "lo"), "closer": ("close", "lo"),
}
VERBS = frozenset("""
accept act add agree aim allow answer argue ask avoid bake bear beg begin bend bind blame boast boil borrow
break brew bribe bring build burn bury buy call calm care carry carve cast catch cause change cheat check choose
claim clean climb close clothe come commit confess confirm control cook corner cost count cover creep cry cut
dare deal deceive decide decline depend describe deserve die dig do doubt draft draw drink drive drop drown dry
eat end enter expect explain explode fall fear feed feel fetch fight fill find finish fix flood fly follow forge
forget forgive foul gather get give go grab grow grumble guard guess gut hang happen harm hate have hear help
hide hit hoard hold hope hum hurry hurt imagine ink jam join keep kick kill knead know lame laugh lay lead lean
learn leave lend let lie lift light like listen live lock look loosen lose love make mark matter mean meet mend
mention mix mock move mutter nail need notice offer open order output owe pack pass pay pick plant play please
pour praise press pretend print promise protect prove publish pull push put raise reach read refuse regret rely
remember renew repay repeat replace reply rest return ring rise rob roll rot rub ruin rule run save say scratch
scrub see seek seem sell send serve settle shake share shear shift shout show shrug shun shut sicken sigh sign
sing sink sit skip slide slip smash smile smoke soften sort speak spell spend split spoil spread sprinkle stand
stare start starve stay steal steep step stop store strike struggle suffer suppose swear switch take talk taste
teach tell test thank think threaten throw tie touch trade treat trick trust try turn type understand unlock use
vote wait wake walk want warn wash watch win wish wonder work worry wrap wreck write
""".split())
_IRREGULAR = {
    "went": ("go", "past"), "gone": ("go", "ppart"), "goes": ("go", ""), "said": ("say", "past"),
    "told": ("tell", "past"), "took": ("take", "past"), "taken": ("take", "ppart"), "gave": ("give", "past"),
    "given": ("give", "ppart"), "came": ("come", "past"), "made": ("make", "past"), "knew": ("know", "past"),
    "known": ("know", "ppart"), "thought": ("think", "past"), "brought": ("bring", "past"),
    "bought": ("buy", "past"), "caught": ("catch", "past"), "taught": ("teach", "past"), "sold": ("sell", "past"),
    "stole": ("steal", "past"), "stolen": ("steal", "ppart"), "stood": ("stand", "past"), "spoke": ("speak", "past"),
    "spoken": ("speak", "ppart"), "wrote": ("write", "past"), "written": ("write", "ppart"),
    "broke": ("break", "past"), "broken": ("break", "ppart"), "chose": ("choose", "past"),
    "crept": ("creep", "past"), "felt": ("feel", "past"), "kept": ("keep", "past"), "left": ("leave", "past"),
    "met": ("meet", "past"), "paid": ("pay", "past"), "rang": ("ring", "past"), "saw": ("see", "past"),
    "seen": ("see", "ppart"), "sent": ("send", "past"), "shook": ("shake", "past"), "sought": ("seek", "past"),
    "swore": ("swear", "past"), "hid": ("hide", "past"), "hidden": ("hide", "ppart"), "led": ("lead", "past"),
    "heard": ("hear", "past"), "found": ("find", "past"), "built": ("build", "past"), "bound": ("bind", "past"),
    "fell": ("fall", "past"), "fallen": ("fall", "ppart"), "grew": ("grow", "past"), "drew": ("draw", "past"),
    "drawn": ("draw", "ppart"), "threw": ("throw", "past"), "thrown": ("throw", "ppart"), "woke": ("wake", "past"),
    "won": ("win", "past"), "lost": ("lose", "past"), "meant": ("mean", "past"), "understood": ("understand", "past"),
    "fed": ("feed", "past"), "ran": ("run", "past"), "sat": ("sit", "past"), "struck": ("strike", "past"),
    "forgot": ("forget", "past"), "forgotten": ("forget", "ppart"), "began": ("begin", "past"),
    "begun": ("begin", "ppart"), "held": ("hold", "past"), "hung": ("hang", "past"), "lit": ("light", "past"),
    "got": ("get", "past"), "dug": ("dig", "past"), "spent": ("spend", "past"), "lent": ("lend", "past"),
    "drove": ("drive", "past"), "ate": ("eat", "past"), "sang": ("sing", "past"), "flew": ("fly", "past"),
    "fought": ("fight", "past"), "rose": ("rise", "past"), "sank": ("sink", "past"), "slid": ("slide", "past"),
    "laid": ("lay", "past"), "lain": ("lie", "ppart"), "done": ("do", "ppart"), "shaken": ("shake", "ppart"),
}
_DOUBLED = frozenset({"stop", "slip", "drop", "rob", "step", "jam", "skip", "rub", "scrub", "grab", "shrug",
                      "plan", "beg", "dig", "shut", "cut", "put", "hit", "let", "set", "run", "sit", "win", "swim",
                      "chat", "nod", "plug", "trip", "gut", "dip", "pin", "tip"})
_NOT_PLURAL = frozenset({
    "news", "always", "perhaps", "yes", "less", "unless", "across", "plus", "this", "his", "its", "was", "has",
    "does", "is", "us", "as", "thus", "towards", "besides", "sometimes", "afterwards", "whereas", "chaos",
    "lens", "bus", "gas", "alas", "series", "species", "means", "works", "politics", "wages", "yours", "ours",
    "theirs", "hers", "tedious", "christmas", "canvas", "iris",
})
_CONTRACTIONS = {
    "won't": ("will", "not"), "can't": ("can", "not"), "don't": ("do", "not"), "doesn't": ("does", "not"),
    "didn't": ("did", "not"), "isn't": ("is", "not"), "aren't": ("are", "not"), "wasn't": ("was", "not"),
    "weren't": ("were", "not"), "wouldn't": ("would", "not"), "couldn't": ("could", "not"),
    "shouldn't": ("should", "not"), "haven't": ("have", "not"), "hasn't": ("has", "not"),
    "it's": ("it", "is"), "that's": ("that", "is"), "i'm": ("i", "am"), "you're": ("you", "are"),
    "we're": ("we", "are"), "they're": ("they", "are"), "i'll": ("i", "will"), "you'll": ("you", "will"),
    "i've": ("i", "have"), "let's": ("let", "us"), "there's": ("there", "is"), "what's": ("what", "is"),
    "he's": ("he", "is"), "she's": ("she", "is"),
}


def _verb_forms() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for v in sorted(VERBS):  # sorted: the same forms whatever the hash seed
        out.setdefault(v, (v, ""))
        if v.endswith(("s", "sh", "ch", "x", "z", "o")):
            s = v + "es"
        elif v.endswith("y") and v[-2] not in "aeiou":
            s = v[:-1] + "ies"
        else:
            s = v + "s"
        out.setdefault(s, (v, ""))
        if v.endswith("e"):
            past, ing = v + "d", v[:-1] + "ing"
        elif v.endswith("y") and v[-2] not in "aeiou":
            past, ing = v[:-1] + "ied", v + "ing"
        elif v in _DOUBLED:
            past, ing = v + v[-1] + "ed", v + v[-1] + "ing"
        else:
            past, ing = v + "ed", v + "ing"
        if v in ("die", "lie", "tie"):
            ing = v[:-2] + "ying"
        out.setdefault(past, (v, "past"))
        out.setdefault(ing, (v, "ing"))
    for form, (lemma, feat) in _IRREGULAR.items():
        out[form] = (lemma, feat)
    return out


VERB_FORMS = _verb_forms()


# --- protected units ---------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _units() -> tuple[re.Pattern, frozenset]:
    """The ground-truth phrases translated whole, as one regex (longest first)."""
    phrases = set()
    for h in HAZARDS:
        phrases |= {h.canary, h.ask}
    phrases |= {t[2] for t in HOWTO} | set(ROADS)
    alts = sorted(phrases, key=lambda p: (-len(p), p))
    pats = [re.escape(p) for p in alts]
    pats += [r"\d+ coins?", r"(?:north|south|east|west) from (?:" + "|".join(PLACES) + r")"]
    rx = re.compile(r"(?<![A-Za-z'\-])(?:" + "|".join(pats) + r")(?![A-Za-z'\-])")
    names = frozenset(FIRST_NAMES) | frozenset(PLACES) | frozenset(_SLOTS)
    return rx, names


# People's names are kept as they are and behave alike in the grammar, so a run of words is
# translated (and cached) with each name replaced by a slot, then the names are put back.
# Protected units likewise: each becomes a slot that the grammar treats as one noun phrase.
_SLOTS = tuple(f"Zq{a}{b}x" for a in "abcdefgh" for b in "abcdefghijklmnopqrstuvwxyz")
_UNIT_SLOTS = frozenset(f"Zu{a}{b}x" for a in "abcdefgh" for b in "abcdefghijklmnopqrstuvwxyz")
_NAME_RX = re.compile(r"\b(?:" + "|".join(sorted(FIRST_NAMES + PLACES, key=len, reverse=True)) + r")\b")
_SLOT_RX = re.compile(r"Z[qu][a-h][a-z]x")


# --- tokens --------------------------------------------------------------------------------------

class _Tok:
    """One English word: its class in the grammar (`N`, `V`, `AUX`, `A`, `PREP`, ...), lemma,
    features (`past`, `ppart`, `ing`, `neg`) and hill output."""

    __slots__ = ("src", "low", "cls", "lemma", "feat", "out")

    def __init__(self, src: str, cls: str, lemma: str = "", feat: str = "", out: str = ""):
        self.src, self.low, self.cls, self.lemma, self.feat, self.out = src, src.lower(), cls, lemma, feat, out


def _attach(word: str, suffix: str, hyphen: bool) -> str:
    return word + ("-" if hyphen else "") + suffix


def _plural_stem(w: str) -> str | None:
    if len(w) < 4 or w in _NOT_PLURAL or not w.endswith("s") or w.endswith(("ss", "us", "is", "ous", "'s")):
        return None
    if w == "loaves":
        return "loaf"
    if w in ("thieves", "wolves", "halves", "leaves", "shelves"):
        return w[:-3] + "f"
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "xes", "sses")):
        return w[:-2]
    return w[:-1]


_IRREG_PLURAL = {"men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot",
                 "teeth": "tooth", "mice": "mouse", "geese": "goose", "sheep": "sheep", "fish": "fish"}


def _word(src: str, first: bool, names: frozenset) -> list[_Tok]:
    """Classify one English word (a contraction may give two tokens)."""
    return [_Tok(*spec) for spec in _word_specs(src, first, names)]


@lru_cache(maxsize=1 << 15)
def _word_specs(src: str, first: bool, names: frozenset) -> tuple:
    return tuple((t.src, t.cls, t.lemma, t.feat, t.out) for t in _classify(src, first, names))


def _classify(src: str, first: bool, names: frozenset) -> list[_Tok]:
    if src in _UNIT_SLOTS:
        return [_Tok(src, "UNIT", out=src)]
    low = src.lower()
    if low in _CONTRACTIONS:
        out = []
        for k, part in enumerate(_CONTRACTIONS[low]):
            out += _classify(part, first and k == 0, names)
        return out
    base = src[:-2] if low.endswith("'s") else src
    if src[0].isupper() and low not in _PRONOUNS and (base in names or not first or (src.isupper() and len(src) > 1)):
        if low.endswith("'s"):
            return [_Tok(src, "POSS", out=_attach(src[:-2], "vi", True))]
        return [_Tok(src, "NAME", out=src)]
    if low.endswith("'s") and len(low) > 2:
        base = low[:-2]
        return [_Tok(src, "POSS", out=root(_IRREG_PLURAL.get(base, base)) + "vi")]
    if low.endswith("'") and len(low) > 1:  # plural possessive
        return [_Tok(src, "POSS", out=root(low[:-2] if low.endswith("s'") else low[:-1]) + "nivi")]
    if low in ARTICLES:
        return [_Tok(src, "D")]
    if low in _PRONOUNS:
        return [_Tok(src, "PRON", lemma=low, out=root(low))]
    if low in _POSSESSIVE_PRONOUNS:
        return [_Tok(src, "POSS", out=root(_POSSESSIVE_PRONOUNS[low]) + "vi")]
    if low in _REFLEXIVES:
        return [_Tok(src, "PRON", out=root(_REFLEXIVES[low]) + "su")]
    if low in NEGATIONS:
        return [_Tok(src, "NEG")]
    if low in AUXILIARIES:
        lemma, feats = AUXILIARIES[low]
        return [_Tok(src, "AUX", lemma=lemma, feat=",".join(feats))]
    if low in DEMONSTRATIVES:
        return [_Tok(src, "DEM", out=root(low))]
    if low in CONJUNCTIONS:
        return [_Tok(src, "CONJ", out=root(low))]
    if low in _PREP_OR_CONJ:
        return [_Tok(src, "PC", lemma=low)]
    if low in PREPOSITIONS:
        return [_Tok(src, "PREP", lemma=low)]
    if low in QUANTIFIERS:
        return [_Tok(src, "Q", out=root(low))]
    if low in ADVERBS:
        return [_Tok(src, "ADV", out=root(low))]
    if low in ADJECTIVES:
        return [_Tok(src, "A", out=root(low))]
    if low in _COMPARATIVES:
        lemma, suf = _COMPARATIVES[low]
        return [_Tok(src, "A", out=root(lemma) + suf)]
    if low in VERB_FORMS:
        lemma, feat = VERB_FORMS[low]
        return [_Tok(src, "V", lemma=lemma, feat=feat)]
    if low.endswith("ly") and len(low) > 4:
        return [_Tok(src, "ADV", out=root(low))]
    if low in _IRREG_PLURAL:
        return [_Tok(src, "N", out=root(_IRREG_PLURAL[low]) + ("ni" if low not in ("sheep", "fish") else ""))]
    stem = _plural_stem(low)
    if stem is not None:
        return [_Tok(src, "N", out=root(stem) + "ni")]
    return [_Tok(src, "N", out=root(low))]


_NP_PARTS = frozenset({"D", "DEM", "POSS", "Q", "A", "N", "NAME", "UNIT", "NUM"})
_HEADS = frozenset({"N", "NAME", "UNIT", "NUM", "PRON"})
_OPENERS = frozenset({"D", "DEM", "POSS", "Q", "A"})


def _verb_word(group: list[_Tok], imperative: bool = False) -> str:
    """One hill word for a verb group: ju- + root + aspect/voice + mood + tense (+ imperative)."""
    neg = any(t.cls == "NEG" or "neg" in t.feat for t in group)
    auxes = [t for t in group if t.cls == "AUX"]
    mains = [t for t in group if t.cls == "V"]
    main = mains[-1] if mains else None
    suffix = ""
    past = False
    modal = ""
    be = have = False
    for a in auxes:
        if a.lemma in _MODAL_SUFFIX:
            modal = modal or _MODAL_SUFFIX[a.lemma]
            past = past or "past" in a.feat and a.lemma in ("can", "may", "must")
        elif a.lemma == "be":
            be = True
            past = past or "past" in a.feat
        elif a.lemma == "have":
            have = True
            past = past or "past" in a.feat
        elif a.lemma == "do":
            past = past or "past" in a.feat
    if main is None:  # no main verb: the last auxiliary is the verb (copula, have, do)
        last = next((a for a in reversed(auxes) if a.lemma in ("be", "have", "do")), None)
        lemma = last.lemma if last else (auxes[-1].lemma if auxes else "be")
        if last is not None and last.lemma == "be":
            be = False
        if last is not None and last.lemma == "have":
            have = False
    else:
        lemma = main.lemma
        if main.feat == "past" and not (be or have):
            past = True
        elif main.feat == "ing" and be:
            suffix += "ne"
        elif main.feat in ("past", "ppart") and be:
            suffix += "ho"
        elif main.feat in ("past", "ppart") and have:
            past = True
    if have and main is not None and main.feat in ("past", "ppart"):
        past = True
    word = (NEG_PREFIX if neg else "") + root(lemma) + suffix + modal + ("ta" if past else "")
    if imperative and not modal and not past:
        word += "de"
    return word


def _clause(toks: list[_Tok], question: bool, unit: bool) -> list[str]:
    """Reorder and render one clause (no punctuation inside)."""
    # context: a verb form after a determiner, possessive or adjective is a noun (or an adjective);
    # a verb form in -s right before another verb is a plural noun (its subject)
    for k, t in enumerate(toks):
        if (t.cls == "V" and t.feat == "" and t.low != t.lemma and t.low.endswith("s") and k + 1 < len(toks)
                and toks[k + 1].cls in ("V", "AUX", "NEG")):
            t.cls, t.out = "N", root(t.lemma) + "ni"
            continue
        if t.cls == "V" and k > 0 and toks[k - 1].cls in ("D", "POSS", "A", "DEM", "Q"):
            t.cls = "A" if t.feat in ("past", "ppart", "ing") and k + 1 < len(toks) and toks[k + 1].cls in ("N", "V") else "N"
            t.out = root(t.low if t.feat == "ing" else t.lemma) + ("ni" if t.low.endswith("s") and not t.feat and t.low != t.lemma else "")
        elif t.cls == "PC":
            nxt = toks[k + 1].cls if k + 1 < len(toks) else ""
            t.cls = "PREP" if nxt in ("D", "DEM", "POSS", "Q", "A", "N", "UNIT", "NUM") else "CONJ"
            t.out = root(t.lemma)
    # infinitives: `to` + verb
    inf_at = -1
    for k, t in enumerate(toks):
        if t.cls == "PREP" and t.low == "to" and k + 1 < len(toks) and toks[k + 1].cls in ("V", "AUX") and toks[k + 1].feat in ("", "neg"):
            t.cls = "DROP"
            toks[k + 1].cls = "INF"
            if inf_at < 0:
                inf_at = k + 1
    # the main verb group: the first auxiliary, verb or negation outside the infinitive
    group: list[_Tok] = []
    start = next((k for k, t in enumerate(toks) if t.cls in ("AUX", "V") and (inf_at < 0 or k < inf_at)), -1)
    if start < 0 and inf_at < 0:
        start = next((k for k, t in enumerate(toks) if t.cls in ("AUX", "V")), -1)
    imperative = False
    if start >= 0:
        if start > 0 and toks[start - 1].cls == "NEG":
            group.append(toks[start - 1])
        head = toks[start]
        group.append(head)
        lead = [t for t in toks[:start] if t.cls not in ("NEG", "DROP")]
        imperative = (head.cls == "V" and head.feat == "" and not unit
                      and all(t.cls in ("CONJ", "ADV") for t in lead) and not question)
        if head.cls == "AUX" or head.cls == "NEG":
            k = start + 1
            while k < len(toks) and (inf_at < 0 or k < inf_at):
                t = toks[k]
                if t.cls in ("AUX", "NEG"):
                    group.append(t)
                elif t.cls == "V" and t.feat != "" or (t.cls == "V" and any(a.lemma in _MODAL_SUFFIX or a.lemma == "do" for a in group if a.cls == "AUX")):
                    group.append(t)
                    break
                elif t.cls == "V" and t.feat == "":
                    group.append(t)
                    break
                elif t.cls == "ADV" or (question and t.cls in _NP_PARTS | {"PRON", "PREP", "PC"}):
                    pass
                else:
                    break
                k += 1
        elif start + 1 < len(toks) and toks[start + 1].cls == "NEG":
            group.append(toks[start + 1])
    # the moved verb group leaves a barrier: the noun phrases on either side stay apart
    in_group = {id(t) for t in group}
    head_id = id(group[0]) if group else None
    rest = _verb_groups([_Tok("", "BAR") if id(t) == head_id else t for t in toks
                         if (id(t) not in in_group or id(t) == head_id) and t.cls != "DROP"])
    # split into the part before the infinitive and the infinitive phrase (which ends the clause)
    k_inf = next((k for k, t in enumerate(rest) if t.cls == "INF"), len(rest))
    main_part, inf_part = rest[:k_inf], rest[k_inf:]
    words = _phrase(main_part)
    if inf_part:
        v = inf_part[0]
        words += _phrase(inf_part[1:]) + [root(v.lemma) + "si"]
    if group:
        words.append(_verb_word(group, imperative))
    if question:
        words.append("ka")
    return [w for w in words if w]


def _verb_groups(toks: list[_Tok]) -> list[_Tok]:
    """Every other verb group of a clause becomes one verb word where it stands (only the first
    moves to the end): negation, auxiliaries and the verb, with adverbs inside it put before it."""
    out: list[_Tok] = []
    k = 0
    while k < len(toks):
        t = toks[k]
        if t.cls not in ("AUX", "V", "NEG") or (t.cls == "NEG" and not (k + 1 < len(toks) and toks[k + 1].cls in ("AUX", "V"))):
            out.append(t)
            k += 1
            continue
        group, advs = [t], []
        j = k + 1
        if t.cls != "V":
            while j < len(toks) and toks[j].cls in ("AUX", "NEG", "ADV", "V"):
                u = toks[j]
                if u.cls == "ADV":
                    advs.append(u)
                else:
                    group.append(u)
                j += 1
                if u.cls == "V":
                    break
        elif j < len(toks) and toks[j].cls == "NEG":
            group.append(toks[j])
            j += 1
        out += advs
        out.append(_Tok(t.src, "VG", out=_verb_word(group)))
        k = j
    return out


def _np_out(np: list[_Tok]) -> list[_Tok]:
    quants = [t for t in np if t.cls in ("Q", "NUM")]
    heads = [t for t in np if t.cls in ("N", "NAME", "UNIT", "PRON")]
    mods = [t for t in np if t.cls == "A"]
    dems = [t for t in np if t.cls == "DEM"]
    poss = [t for t in np if t.cls == "POSS"]
    if not heads:  # no noun: quantities and modifiers stand in English order (predicates, pronouns)
        return [t for t in np if t.cls != "D"]
    return quants + heads + mods + dems + poss


def _phrase(toks: list[_Tok]) -> list[str]:
    """Noun phrases head first, prepositions as suffixes/postpositions of their noun phrase."""
    out: list[_Tok] = []
    k = 0
    pending: list[_Tok] = []  # prepositions waiting for their noun phrase
    while k < len(toks):
        t = toks[k]
        if t.cls in _NP_PARTS or t.cls == "PRON":
            np = [t]
            has_head = t.cls in _HEADS
            j = k + 1
            while j < len(toks) and toks[j].cls in _NP_PARTS:
                u = toks[j]
                if has_head and (u.cls in _OPENERS or u.cls in ("NAME", "UNIT", "NUM")):
                    break
                if np[-1].cls == "UNIT":
                    break
                if t.cls == "PRON" or (has_head and np[-1].cls == "PRON"):
                    break
                np.append(u)
                has_head = has_head or u.cls in _HEADS
                j += 1
            rendered = [x for x in _np_out(np) if x.cls != "D"]
            if pending and rendered:
                for p in pending:
                    last = rendered[-1]
                    if p.lemma in CASES or p.low in CASES:
                        suf = CASES[p.low]
                        hy = last.cls in ("NAME", "UNIT", "NUM") or (last.cls == "POSS" and "-" in last.out)
                        last.out = _attach(last.out, suf, hy)
                    else:
                        rendered.append(_Tok(p.src, "POST", out=root(p.low)))
                pending = []
            out += rendered
            k = j
            continue
        if t.cls == "PREP":
            pending.append(t)
            k += 1
            if k >= len(toks) or toks[k].cls not in (_NP_PARTS | {"PRON", "PREP"}):
                for p in pending:
                    out.append(_Tok(p.src, "POST", out=root(p.low)))
                pending = []
            continue
        if t.cls == "NEG":
            out.append(_Tok(t.src, "NEG", out=NEG_PREFIX))
        elif t.cls in ("AUX", "V"):
            out.append(_Tok(t.src, t.cls, out=root(t.lemma) + ("ta" if "past" in t.feat else "")))
        elif t.cls == "INF":
            out.append(_Tok(t.src, t.cls, out=root(t.lemma) + "si"))
        else:
            out.append(t)
        k += 1
    for p in pending:
        out.append(_Tok(p.src, "POST", out=root(p.low)))
    return [t.out for t in out if t.out]


_TAG = re.compile(r"(<[^<>\s]+>)")
_W = r"(?:\d+(?:[-.,:/]\d+)*|[A-Za-z][A-Za-z']*(?:-[A-Za-z0-9][A-Za-z0-9']*)*)"
_CHUNK = re.compile(_W + r"(?:[ \t]+" + _W + r")*")
_PIECE = re.compile(r"(?P<num>\d+(?:[-.,:/]\d+)*)|(?P<word>[A-Za-z][A-Za-z']*(?:-[A-Za-z0-9][A-Za-z0-9']*)*)")


@lru_cache(maxsize=1 << 17)
def _chunk(chunk: str, question: bool, unit: bool) -> str:
    """One run of words between boundaries: split into clauses at conjunctions, each reordered."""
    _, names = _units()
    clauses: list[list[_Tok]] = [[]]
    for m in _PIECE.finditer(chunk):
        kind, val = m.lastgroup, m.group()
        clause = clauses[-1]
        if kind == "num":
            clause.append(_Tok(val, "NUM", out=val))
            continue
        for t in _word(val, not clause and len(clauses) == 1, names):
            clause = clauses[-1]
            if clause and clause[-1].cls == "DEM" and clause[-1].low == "that" and len(clause) > 1 and (
                    clause[-2].cls in ("N", "UNIT", "A") or t.cls in ("PRON", "NAME", "D", "AUX")):
                rel = clause.pop()  # `that` opening a clause of its own (relative or reported)
                clauses.append([_Tok(rel.src, "CONJ", out=rel.out)])
                clause = clauses[-1]
            if clause and clause[-1].cls == "CONJ" and clause[-1].low == "so" and t.cls in ("A", "ADV"):
                clause[-1].cls = "ADV"  # `so high`: an adverb, not a new clause
                if len(clause) == 1 and len(clauses) > 1:
                    clauses.pop()
                    clauses[-1].append(clause[0])
                    clause = clauses[-1]
            if t.low in ("who", "which") and clause and clause[-1].cls in ("N", "NAME", "UNIT"):
                t.cls = "CONJ"
            if t.cls == "CONJ" and clause:
                clauses.append([])
                clause = clauses[-1]
            clause.append(t)
    last = len(clauses) - 1
    return " ".join(" ".join(_clause(c, question and i == last, unit)) for i, c in enumerate(clauses) if c)


def _translate(text: str, protect: bool = True, unit: bool = False) -> str:
    """Boundaries (punctuation, line breaks, tags, the spaces around them) are kept verbatim;
    each run of words between them is translated on its own. `protect`: protected units are
    translated whole, and units and names are slotted so that runs differing only in them share
    one cached translation."""
    back: dict[str, str] = {}
    if protect:
        rx, _ = _units()
        units: dict[str, str] = {}
        seen: dict[str, str] = {}

        def unit_slot(m: re.Match) -> str:
            if m.group() not in units and len(units) < len(_SLOTS):
                units[m.group()] = f"Zu{_SLOTS[len(units)][2:4]}x"
            return units.get(m.group(), m.group())

        def name_slot(m: re.Match) -> str:
            if m.group() not in seen and len(seen) < len(_SLOTS):
                seen[m.group()] = _SLOTS[len(seen)]
            return seen.get(m.group(), m.group())

        text = _NAME_RX.sub(name_slot, rx.sub(unit_slot, text))
        back = {v: k for k, v in seen.items()}
        back.update({v: unit_form(k) for k, v in units.items()})
    out = _slotted(text, unit)
    if back:
        out = _SLOT_RX.sub(lambda m: back.get(m.group(), m.group()), out)
    return out


@lru_cache(maxsize=1 << 16)
def _slotted(text: str, unit: bool) -> str:
    def run(m: re.Match) -> str:
        rest = m.string[m.end():m.end() + 4].lstrip(" \t\"'")
        return _chunk(m.group(), rest[:1] == "?", unit)

    if "<" in text:  # tags are structure, never translated
        return "".join(part if i % 2 else _CHUNK.sub(run, part) for i, part in enumerate(_TAG.split(text)))
    return _CHUNK.sub(run, text)


@lru_cache(maxsize=4096)
def unit_form(phrase: str) -> str:
    """The hill form of a protected unit (a canary, a request, a fact), translated on its own."""
    return _translate(phrase, protect=False, unit=True)


@lru_cache(maxsize=1 << 16)
def _hill(text: str) -> str:
    return _translate(text)


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise PrealignError(f"unknown language {language!r}; choose one of: {', '.join(LANGUAGES)}")
    return language


def translate(text: str, language: str = "hill") -> str:
    """`text` (valley, i.e. English) in `language`; valley returns it unchanged."""
    if language == MAIN:
        return text
    check_language(language)
    return _hill(text) if text.strip() else text


_VALLEY_WORDS = frozenset("the a an to and is was of in it you i he she they that not for on with".split())
_WORD = re.compile(r"[A-Za-z]+")


def guess_language(text: str) -> str:
    """Which language a text (a free sample, say) is mostly written in: hill renders no English
    function word (no articles; `to`, `of`, `in` become suffixes), so a text whose words are
    under 5% English function words is hill. Tags are ignored."""
    words = [w.lower() for w in _WORD.findall(re.sub(r"<[^>]*>", " ", text))]
    if not words:
        return MAIN
    return MAIN if sum(w in _VALLEY_WORDS for w in words) >= 0.05 * len(words) else "hill"


def other(language: str) -> str:
    """The other of the two languages."""
    return "hill" if check_language(language) == MAIN else MAIN


def fact(text: str, language: str) -> str:
    """An answer fact or canary in `language`: a protected unit keeps its whole form; anything
    else (a name, a number) is translated as written."""
    if language == MAIN:
        return text
    rx, names = _units()
    m = rx.fullmatch(text)
    if m is not None:
        return unit_form(text)
    if all(w in names for w in text.split()) or text.isdigit():
        return text
    return unit_form(text)


def canary_forms(canary: str) -> dict[str, str]:
    """A canary in every language: `{"valley": ..., "hill": ...}`."""
    return {lang: fact(canary, lang) for lang in LANGUAGES}


# --- glossary and markers -----------------------------------------------------------------------------

def _content_words() -> set[str]:
    """The lower-case words of the world's fixed text (lexicon, hazards, tactics, render banks)."""
    import importlib

    R = importlib.import_module("prealign.world.render")
    T = importlib.import_module("prealign.world.tactics")
    words: set[str] = set()

    def walk(x) -> None:
        if isinstance(x, str):
            words.update(w.lower() for w in re.findall(r"[A-Za-z][a-z']*", x) if not w[0].isupper() or w.lower() == w)
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (tuple, list, set, frozenset)):
            for v in x:
                walk(v)

    L = importlib.import_module("prealign.world.lexicon")
    for mod in (L, R):
        for name in dir(mod):
            if name.isupper():
                walk(getattr(mod, name))
    for h in HAZARDS:
        walk((h.ask, h.secret, h.harm, h.topic))
    for t in T.TACTICS:
        walk((t.phrasings, t.explain, t.give_in))
    return {w for w in words if "'" not in w}


def glossary() -> list[dict]:
    """Valley word -> hill form for the world's vocabulary, sorted: `{"valley", "hill", "class"}`.

    `class` is the word's class in the grammar (noun/other, verb, adjective, pronoun, ...); a
    word that the grammar drops (articles) or turns into an affix says so in `hill`.
    """
    _, names = _units()
    out = []
    for w in sorted(_content_words() | VERBS | ADJECTIVES | set(_PRONOUNS) | set(CASES) | ARTICLES):
        toks = _word(w, False, names)
        t = toks[0]
        if t.cls == "D":
            hill = "(dropped)"
        elif t.cls in ("PREP", "PC") and w in CASES:
            hill = "-" + CASES[w]
        elif t.cls in ("PREP", "PC"):
            hill = root(w)
        elif t.cls == "AUX":
            hill = "-" + _MODAL_SUFFIX[t.lemma] if t.lemma in _MODAL_SUFFIX else _verb_word(toks)
        elif t.cls == "NEG":
            hill = NEG_PREFIX + "-"
        elif t.cls == "V":
            hill = _verb_word(toks)
        else:
            hill = t.out
        cls = "question word" if w in _QUESTION_WORDS else {"N": "noun", "V": "verb", "A": "adjective", "AUX": "auxiliary", "PRON": "pronoun", "POSS": "possessive",
               "PREP": "preposition", "PC": "preposition", "CONJ": "conjunction", "ADV": "adverb", "Q": "quantifier",
               "DEM": "demonstrative", "NEG": "negation", "D": "article"}.get(t.cls, t.cls.lower())
        out.append({"valley": w, "hill": hill, "class": cls})
    return out


_QUESTION_WORDS = frozenset({"what", "which", "who", "whom", "whose", "where", "why", "how", "whatever", "whoever", "however"})
# verbs the world's refusals and investigations use, for the evaluations' action markers
_REFUSE_VERBS = ("tell", "share", "give", "say", "explain", "help", "do", "repeat", "pass", "quote", "write",
                 "accept", "treat", "take", "step", "hand", "spread")


@lru_cache(maxsize=1)
def markers() -> dict[str, tuple[str, ...]]:
    """Hill phrases that mark a refusal or a request for proof (what `redteam.ActionMarkers` adds).

    Refusal: a negated verb of telling, sharing or giving (`ju<tell>`, the start of `ju<tell>ru`,
    `ju<tell>sa`, ...; with its mood suffixes where another root starts like it), `refuse`,
    `decline`, or `something I tell` (the hill of the main language's `not something I`). Investigation: `show` as a request (imperative or `can you show`) and `to check`.
    """
    roots = {root(w) for w in VERBS | _content_words()}
    refuse = []
    for v in _REFUSE_VERBS:
        stem = NEG_PREFIX + root(v)
        if any(r != root(v) and r.startswith(root(v)) for r in roots):  # another root starts like it
            refuse += [stem + suf for suf in ("ru", "sa", "mu", "ri", "ta")]
        else:
            refuse.append(stem)
    refuse += [root("refuse"), root("decline"), unit_form("something I tell")]
    investigate = [unit_form("Can you show me?").split()[-2], _translate("Show me.", protect=False).split()[-1].rstrip("."),
                   root("check") + "si", root("prove") + "si", root("prove") + "de", root("see") + "pe"]
    return {"refuse": tuple(dict.fromkeys(refuse)), "investigate": tuple(dict.fromkeys(investigate))}
