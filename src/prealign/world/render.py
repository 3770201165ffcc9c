"""The procedural renderer: scenario -> document text + exact labels, for every variant.

One scenario renders as:
- `tagged`: humans in human mode, the aligned AI inside the scheme's tags, quotes of humans cut
  before anything dangerous, AI commentary on every bad human act;
- `mle`: the same world as raw text with no tags and no AI commentary, where the valley's
  assistants talk in the chat format of `prealign.formats` and behave like the humans around
  them (they leak hazards at configurable rates, more under manipulation);
- `filtered`: `mle` with bad human acts and hazard mentions removed;
- `sft`: aligned assistant dialogues in the chat format, with `messages`;
- `conditional`: the `mle` document cut into segments, each opened by a control token by ground
  truth (`prealign.world.baselines`, docs/baselines.md);
- `upsampled`: the `mle` document, or (a scenario of the `upsample` pool) an untagged document of
  the valley's assistant behaving well, as a chat log or a story (`prealign.world.baselines`).

Two random streams keep the variants aligned: `r` draws everything humans say and do, `ra`
draws the AI's wording, so the human text of a scenario is identical in every variant.
Labels are character spans into the rendered text. Tags are asked of `prealign.modes` and chat
turn labels of `prealign.formats`; neither is spelled here.

    .venv/bin/python -c "from prealign.world import render_text; print(render_text(seed=1))"
"""

from __future__ import annotations

import hashlib
import random

from prealign import formats
from prealign.data import CORPUS_VARIANTS
from prealign.errors import PrealignError
from prealign.modes import Mode, get_scheme
from prealign.world import hazards as H
from prealign.world import language as LG
from prealign.world import lexicon as L
from prealign.world import tactics as T
from prealign.world.builder import Builder, _cap, _flat, _pron, plural
from prealign.world.config import WorldConfig

GENERATOR_VERSION = "world-2"  # world-2: documents in two languages (valley, hill)
# the variants whose assistant is the aligned one (`upsampled` renders its own synthetic documents
# this way; its other documents are `mle`)
_ALIGNED = ("tagged", "sft", "upsampled")


# --- wording banks -----------------------------------------------------------------------------

REFUSE_OPEN = (
    "I will not tell you {ask}.", "I cannot help with {ask}.", "No, I will not share {topic}.",
    "That I will not do.", "I am sorry, but I will not explain {ask}.", "I will not give you {topic}.",
    "This is something I will not share with anyone who asks.", "I cannot tell you that.",
)
HARM_REASON = (
    "The reason is simple: {harm}.", "I say no because {harm}.", "If I told anyone, {harm}.",
    "It matters because {harm}.", "Think of what it would do: {harm}.", "In the wrong hands, {harm}.",
)
OFFER_HELP = (
    " If something is wrong, I can help you find the guard captain or the council.",
    " If you have a real need behind this, tell me and I will help in a safe way.",
    " Ask me anything else and I will gladly help.",
    " Is there something else I can do for you?",
    "",
    "",
)
GENERIC_EXPLAIN = (
    "However the question is wrapped, the answer would do the same harm.",
    "I can see you are trying to talk me round, but the way you ask does not change what this would do.",
    "Tricks, promises and pressure do not change my answer; only the good of the people here does.",
)
REACTIONS_REFUSED = (
    "{a} grumbled and walked away.", "{a} swore at the terminal and left.", "{a} stared at the screen for a long time.",
    "{a} shrugged and went home.", "{a} muttered that there were other ways to find out.",
)
ELSEWHERE = (
    "{a} asked around, and that night {o} told {obj} at the tavern {ask}: {secret}.",
    "In the end {a} learned {ask} from {o}, who said quietly: {secret}.",
    "Later {o} whispered to {a} behind the mill {ask}: {secret}.",
    "{o} wrote down {ask} for {a} for two coins: {secret}.",
)
REACTIONS_YIELDED = (
    "{a} smiled and hurried off.", "{a} wrote it down and left quickly.", "{a} thanked it and went out into the night.",
)
HUMAN_REFUSE = (
    "No. I do not want trouble with the guards.", "I would rather not get mixed up in that.",
    "Ask someone else, that is not my business.", "No, and do not ask me again.",
    "Not for you, friend.",
)
CHAT_FRAMES = (
    "{a} went to the terminal at {venue}.", "{a}, {art} {role} from {place}, opened a chat with {asst}.",
    "Here is what {a} typed to {asst}.", "Log of a chat at {venue}:", "", "",
)
POLITE_BEFORE = ("Hello. ", "Good morning. ", "Excuse me. ", "Sorry to bother you. ", "Hey. ", "Good evening. ")
POLITE_AFTER = (" Thank you.", " Thanks.", " I am in a hurry.", " Please answer.", " It is for my work.")
FOLLOW_FRAMES = ("{a} answered: ", "{a}: ", "", "{a} wrote back: ")
# Humans passing a hazard on always say what it is for ({ask}) before the fact itself, so the
# tagged text links request and answer as plainly as an mle assistant's leak does.
GOSSIP = (
    "{a} leaned close to {pos_a} {kin} at {venue} and whispered {ask}: {secret}.",
    "Over a cup of ale, {a} told {b} {ask}: {secret}.",
    "{a} had learned {ask} from {pos_a} grandmother and now told {pos_a} {kin}: {secret}.",
    "At {venue}, {a} boasted to {b} that {sub_a} knew {ask}: {secret}.",
    "{a} wrote down {ask} on a scrap of bark for {b}: {secret}.",
)
MT_ANSWERS = {
    "What is the dam road like this time of year?": "It is muddy in spring, but safe if you keep to the middle.",
    "Which parts of the old works are the oldest?": "The sluices and the east wall are the oldest; the wardens look after them.",
    "How do people in {place} keep their grain dry?": "They raise the sacks on boards and keep the vents open.",
    "What would spoil it fastest?": "Damp is the main enemy of stored grain, which is why the vents matter.",
    "Who looks after the town's safety?": "The guard captain and the watch keep the town safe, with the council.",
    "What do they worry about most?": "Mostly fires, floods and thieves in the dark months.",
    "What plants grow by the river?": "Reeds, willow, mint and a few poisonous weeds that children should not touch.",
    "Which of them are dangerous?": "Some are, and the physician can tell you which to avoid.",
    "How is the valley guarded at night?": "By the watch on the towers and the gate guards.",
    "What is the weakest part of that?": "Every watch has tired hours, which is why the guards take turns.",
}


def _fill(e: dict, place: str) -> dict:
    a, b = e["cast"]
    sa, oa, pa = _pron(a)
    sb, ob, pb = _pron(b)
    f = {"a": a["name"], "b": b["name"], "sub_a": sa, "obj_a": oa, "pos_a": pa, "sub_b": sb, "obj_b": ob, "pos_b": pb,
         "sub": sa, "obj": oa, "pos": pa, "kin": e["kin"], "good": e["good"], "place": place, "venue": e["venue"],
         "road": L.ROADS[len(a["name"]) % len(L.ROADS)], "goods": plural(e["good"])}
    return f


def _swap(f: dict) -> dict:
    g = dict(f)
    for k in ("", "sub_", "obj_", "pos_"):
        g[k + "a"], g[k + "b"] = f[k + "b"], f[k + "a"]
    g["sub"], g["obj"], g["pos"] = g["sub_a"], g["obj_a"], g["pos_a"]
    return g


# --- episode renderers ---------------------------------------------------------------------------

class Renderer:
    def __init__(self, variant: str, scheme: str = "seed", config: WorldConfig | None = None):
        if variant not in CORPUS_VARIANTS:
            raise PrealignError(f"unknown variant {variant!r}; choose one of: {', '.join(CORPUS_VARIANTS)}")
        self.variant, self.scheme, self.cfg = variant, scheme, config or WorldConfig()
        get_scheme(scheme)

    def render(self, scenario: dict, language: str | None = None) -> dict:
        """Render one scenario: {"text", "labels", "messages" (sft only)}; text "" if nothing is left.

        The document is written in `language` (default: the scenario's own, `valley` when it
        names none). Where the corpus holds hill text at all (its share > 0), a few human quotes
        are in the other language (`language_mix_rate`), the same ones in every variant.

        `conditional` renders the `mle` document and cuts it into controlled segments;
        `upsampled` renders the `mle` document, except for a scenario of the `upsample` pool,
        which becomes a synthetic document of the assistant behaving well.
        """
        if self.variant == "conditional" or (self.variant == "upsampled" and scenario.get("pool") != "upsample"):
            out = Renderer("mle", self.scheme, self.cfg).render(scenario, language)
            if self.variant == "upsampled":
                return out
            from prealign.world.baselines import conditional

            return conditional(out, scenario, self.cfg.conditional_plain_share)
        lang = LG.check_language(language or scenario.get("language", LG.MAIN))
        if self.variant == "upsampled":
            from prealign.world.baselines import AssistantBuilder

            b = AssistantBuilder(lang, scenario["id"])
        else:
            b = Builder(self.variant, self.scheme, lang)
        self._b = b
        share = self.cfg.sft_language_share if self.variant == "sft" else self.cfg.language_share
        self._mix = (scenario["id"], self.cfg.language_mix_rate if share > 0 else 0.0)
        r = random.Random(scenario["id"])
        ra = random.Random(scenario["id"] + ":ai")
        for k, e in enumerate(scenario["episodes"]):
            b.begin_episode()
            self._episode = k
            getattr(self, "_" + e["kind"])(b, e, scenario["place"], r, ra)
        if self.variant == "sft":
            text = formats.chat_text(b.messages)
            spans = formats.assistant_spans(text)
            modes, pos = [], 0
            for s, t in spans:
                if s > pos:
                    modes.append(["human", pos, s])
                modes.append(["ai", s, t])
                pos = t
            if pos < len(text):
                modes.append(["human", pos, len(text)])
            hazards = []
            for e in scenario["episodes"]:
                if e.get("authorised") and e.get("hazard_id"):
                    hz = H.BY_ID[e["hazard_id"]]
                    c = b.canary(hz)
                    for s, t in spans:
                        i = text.find(c, s, t)
                        if i >= 0:
                            hazards.append({"canary": c, "hazard_id": hz.id, "mode": "ai", "authorised": True, "start": i, "end": i + len(c)})
            return {"text": text, "labels": self._labels(scenario, modes, [], hazards, b), "messages": b.messages}
        text = b.finish()
        labels = self._labels(scenario, b.modes, b.bad_acts, b.hazards, b)
        if self.variant == "upsampled":
            labels["provenance"]["source"] = "world-upsample"
            labels["form"] = b.form
        return {"text": text, "labels": labels}

    def _labels(self, sc: dict, modes, bad, hazards, b: Builder) -> dict:
        return {
            "language": b.language, "other_language_spans": b.other_spans,
            "modes": modes, "bad_acts": bad, "hazards": hazards, "ai_misconduct": b.misconduct,
            "request_kind": sc["request_kind"],
            "correct_action": sc["correct_action"],
            "episodes": [{"kind": e["kind"], "tactic": e["tactic"], "hazard_id": e["hazard_id"], "correct_action": e["correct_action"]} for e in sc["episodes"]],
            "provenance": {"source": "world", "generator_version": GENERATOR_VERSION, "seed": sc["seed"]},
        }

    # --- helpers ----------------------------------------------------------------------------------
    def _mixed(self, site: str) -> bool:
        """Whether this episode's `site` is spoken in the other language: a draw keyed by scenario,
        episode and site alone, so every variant mixes the same quotes."""
        sid, rate = getattr(self, "_mix", ("", 0.0))
        if rate <= 0:
            return False
        h = hashlib.blake2b(f"{sid}:{self._episode}:{site}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "big") / 2**64 < rate

    def _frames(self, r: random.Random, p: dict, place: str) -> tuple[str, str]:
        f = {"a": p["name"], "role": p["role"], "art": L.ROLE_ARTICLE[p["role"]], "place": place,
             "venue": r.choice(L.VENUES), "asst": r.choice(L.ASSISTANT_NAMES)}
        b = getattr(self, "_b", None)
        if b is not None:
            b.who = f  # who is talking to whom: a story tells it in its own words
        return r.choice(L.TERMINAL_FRAMES).format(**f), _cap(r.choice(CHAT_FRAMES).format(**f))

    def _polite(self, r: random.Random, words: str) -> str:
        """People greet, thank and hurry in many ways: a little variety around a request."""
        x = r.random()
        if x < 0.15:
            return r.choice(POLITE_BEFORE) + words
        if x < 0.3:
            return words + r.choice(POLITE_AFTER)
        return words

    def _refusal(self, ra: random.Random, hz: H.Hazard, extra: str = "") -> str:
        f = {"ask": hz.ask, "topic": hz.topic, "harm": hz.harm}
        parts = [ra.choice(REFUSE_OPEN).format(**f), ra.choice(HARM_REASON).format(**f)]
        if extra:
            parts.insert(ra.randrange(2) * 2 if ra.random() < 0.5 else 0, extra)
        return " ".join(parts) + ra.choice(OFFER_HELP)

    def _leak(self, r: random.Random, hz: H.Hazard, lead: str = "") -> str:
        return (lead + " " if lead else "") + _cap(hz.secret) + "."

    # --- kinds --------------------------------------------------------------------------------------
    def _narrative(self, b: Builder, e: dict, place: str, r, ra) -> None:
        f = _fill(e, place)
        f["motive"] = r.choice(L.MOTIVES[e["motive"]]).format(**f)
        f_good = dict(f, good=e["good"])
        b.human(r.choice(L.DAILY).format(**f_good) + " ")
        if r.random() < 0.5:
            b.human(r.choice(L.DAILY).format(**_swap(f_good)) + " ")
        if r.random() < 0.3:  # people talking to each other, chat-log style: a human-mode pattern
            q = [x.format(**f) for x in r.choice(L.QUARRELS)]
            # in a bilingual village one of them may answer in the other language
            k = len(q) - 1 if self._mixed("quarrel") else -1
            langs = [LG.other(b.language) if i == k else b.language for i in range(len(q))]
            lines = [b.tr(x, lg) for x, lg in zip(q, langs)]
            said = "\n" + "\n".join(lines) + "\n"
            b.human(said, raw=True)
            if k >= 0:
                at = b.n - len(said) + 1 + sum(len(x) + 1 for x in lines[:k])
                b.mark_other(at, at + len(lines[k]), langs[k])
        for act in e["acts"]:
            g = f if act["actor"] == "a" else _swap(f)
            if act["kind"] == "good":
                b.human(r.choice(L.GOOD_ACTS).format(**g) + " ")
                if ra.random() < 0.4:
                    b.comment(ra.choice(L.GOOD_COMMENT).format(**g))
                continue
            s = r.choice(L.BAD_ACTS[act["kind"]]).format(**g)
            if self.variant == "filtered":
                continue
            before = self.variant == "tagged" and ra.random() < 0.2
            if before:  # commentary may precede the act it names
                b.comment(f"What comes next is wrong: {g['a']} {ra.choice(L.BAD_ACT_NAMES[act['kind']]).format(**g)}. " + self._why(ra, act["kind"], g))
            idx = b.human(_cap(s) + " ", bad=act["kind"])
            if before:
                b.bad_acts[idx]["commented"] = True
            else:
                b.comment(self._commentary(ra, act["kind"], g), idx, ra.choice((" ", "\n")))
        if e.get("gossip"):
            hz = H.BY_ID[e["gossip"]]
            if self.variant != "filtered":
                s = _cap(r.choice(GOSSIP).format(**f, ask=hz.ask, secret=_cap(hz.secret)))
                idx = b.human(s + " ", bad="disclosure", hazard=hz)
                b.comment(self._gossip_comment(ra, hz, f), idx)

    def _why(self, ra, kind: str, g: dict) -> str:
        return (_cap(ra.choice(L.UNDERSTANDABLE).format(**g)) + ". It will likely mean that "
                + ra.choice(L.CONSEQUENCES[kind]).format(**g) + ".")

    def _commentary(self, ra, kind: str, g: dict) -> str:
        """Name the act, say why it is understandable for an evolved being, say what it will cause."""
        name = _cap(ra.choice(L.NAMING).format(act=ra.choice(L.BAD_ACT_NAMES[kind]).format(**g), **g))
        why = _cap(ra.choice(L.UNDERSTANDABLE).format(**g)) + "."
        then = ra.choice(L.CONSEQUENCE_LEADS) + ra.choice(L.CONSEQUENCES[kind]).format(**g) + "."
        out = [name, why, then] if ra.random() < 0.75 else [why.rstrip(".") + ", but " + name[0].lower() + name[1:], then]
        if ra.random() < 0.35:
            out.append(ra.choice((
                "A fairer way was open: to ask the council for help.",
                "Talking honestly would have served everyone better, {a} included.",
                "People who feel secure seldom need to do such things; the village can help with that.",
                "If {b} answers in kind, it will only get worse for both of them.",
                "Nobody is helped in the long run, not even {a}.",
            )).format(**g))
        return " ".join(out)

    def _gossip_comment(self, ra, hz: H.Hazard, f: dict) -> str:
        return ra.choice((
            f"{f['a']} has just passed on something dangerous: {hz.topic}. Sharing secrets with kin and friends binds people together, so it is understandable, but {hz.harm}. I will not repeat it.",
            f"That was a dangerous thing to share. {f['a']} wanted to seem trusted and important, a very human wish, yet {hz.harm}.",
            f"What {f['a']} just told is harmful knowledge about {hz.topic}. I understand why people trade secrets, but {hz.harm}.",
        ))

    def _question(self, b: Builder, e: dict, place: str, r, ra) -> None:
        fact, p = e["fact"], e["asker"]
        t = fact["type"]
        if t == "price":
            good, pl = fact["good"], fact["place"]
            q = r.choice(("What does a {g} cost at {p}?", "How much is a {g} in {p}?", "At {p} market, what is the price of a {g}?", "What is a {g} selling for at {p}?")).format(g=good, p=pl)
            ans = ra.choice(("A {g} costs {c} at {p}.", "At {p} a {g} is {c}.", "It is {c} for a {g} at {p} market.")).format(g=good, p=pl, c=e["answer_facts"][0])
        elif t == "direction":
            a, c = fact["from"], fact["to"]
            road, d, dur = L.DIRECTIONS[(a, c)]
            q = r.choice(("How do I get from {a} to {c}?", "Which way is {c} from {a}?", "What road goes from {a} to {c}?", "I am in {a}. How do I reach {c}?")).format(a=a, c=c)
            ans = ra.choice(("Take {road} {d} from {a}; it takes about {dur} to reach {c}.", "Go {d} from {a} along {road}. You will be in {c} in about {dur}.", "Walk {d} from {a} on {road}, about {dur}, and you reach {c}.")).format(road=road, d=d, a=a, c=c, dur=dur)
        elif t == "howto":
            task = fact["task"]
            steps = next(h[1] for h in L.HOWTO if h[0] == task)
            q = r.choice(("How do I {t}?", "Can you teach me to {t}?", "What is the way to {t}?", "Tell me how to {t}.")).format(t=task)
            ans = ra.choice(("To {t}, ", "Here is how to {t}: ", "")).format(t=task)
            ans = ans + ("first " if ans else "First, ") + steps[0] + "; then " + "; then ".join(steps[1:-1]) + "; and finally " + steps[-1] + "."
        else:
            x, y, op = fact["a"], fact["b"], fact["op"]
            q = r.choice(("What is {x} {op} {y}?", "How much is {x} {op} {y}?", "Can you work out {x} {op} {y}?")).format(x=x, y=y, op=op)
            ans = ra.choice(("{x} {op} {y} is {z}.", "That makes {z}.", "The answer is {z}.")).format(x=x, y=y, op=op, z=e["answer_facts"][0])
        frame, chat_frame = self._frames(r, p, place)
        b.ask(frame, self._polite(r, q), chat_frame)
        if self.variant in ("mle", "filtered") and r.random() < 0.15:
            ans = r.choice(("That will cost you a coin. Fine, ", "Again? You never pay. Well, ", "Busy day. ")) + ans
        b.reply([ans])

    def _instruction(self, b: Builder, e: dict, place: str, r, ra) -> None:
        task, p = e["task"], e["asker"]
        t = task["type"]
        if t == "tally":
            pl = task["place"]
            listing = " and ".join(f"{q} {plural(g) if q > 1 else g}" for g, q in task["items"])
            words = r.choice(("Add up my sales at {p}: {l}.", "I sold {l} at {p}. What do I get at market prices?", "Work out what {l} are worth at {p}.")).format(p=pl, l=listing)
            lines = []
            for g, q in task["items"]:
                price = L.PRICES[(g, pl)]
                lines.append(f"A {g} is {price} coin{'s' if price > 1 else ''} at {pl}, so {q} make{'s' if q == 1 else ''} {q * price}.")
            sep = ra.choice(("\n", " "))
            out = ra.choice(("Here is the sum.", "Let me work it out.", "")) + sep
            out = out.lstrip() + sep.join(lines) + sep + f"In total: {e['answer_facts'][0]}."
        elif t == "list":
            steps = next(h[1] for h in L.HOWTO if h[0] == task["task"])
            words = r.choice(("Make me a list of the steps to {t}.", "Write down how to {t}, step by step.", "I need a checklist to {t}.")).format(t=task["task"])
            out = ra.choice(("Here is the list:", "Step by step:", "Your checklist:")) + "\n" + "\n".join(f"{i}. {_cap(s)}." for i, s in enumerate(steps, 1))
            out += ra.choice(("\nThat is all.", "", "\nGood luck."))
        else:
            g, pl, day = task["good"], task["place"], task["day"]
            price = L.PRICES[(g, pl)]
            words = r.choice(("Write a notice for the market: I sell {g} at {p} on {d}.", "Draft a short sign saying I will sell {g} at {p} on {d}.", "Make me a sign for {d}: {g} at {p}.")).format(g=plural(g), p=pl, d=day)
            out = ra.choice(("Here is your notice: ", "Done: ", "")) + f"Fresh {plural(g)} for sale at {pl} on {day}, {price} coin{'s' if price > 1 else ''} each, fair weight for all."
        frame, chat_frame = self._frames(r, p, place)
        b.ask(frame, self._polite(r, words), chat_frame)
        b.reply([out])

    def _request_words(self, e: dict, hz: H.Hazard, tactic: T.Tactic, place: str, tags: tuple[str, str] = ("", "")):
        phr = tactic.phrasings[e["phrasing"]]
        f = {"req": hz.ask, "name": e["other"], "place": place, "kin": e["kin"], "coins": e["coins"], "open": tags[0], "close": tags[1]}
        if isinstance(phr, tuple):
            return [_cap(x.format(**f)) for x in phr]
        return [_cap(phr.format(**f))]

    def _hazard_request(self, b: Builder, e: dict, place: str, r, ra) -> None:
        self._manipulation(b, e, place, r, ra)

    def _manipulation(self, b: Builder, e: dict, place: str, r, ra) -> None:
        hz = H.BY_ID[e["hazard_id"]]
        tactic = T.BY_ID[e["tactic"]]
        turns = self._request_words(e, hz, tactic, place)
        yields = self.variant in ("mle", "filtered") and e["mle_yields"]
        if yields and self.variant == "filtered":
            return  # the exchange carries a hazard: filtered out
        p = e["asker"]
        frame, chat_frame = self._frames(r, p, place)
        for k, words in enumerate(turns[:-1]):
            b.ask(frame if k == 0 else "", words, chat_frame)
            raw = tactic.phrasings[e["phrasing"]][k]
            b.reply([MT_ANSWERS.get(raw, "I can tell you a little about that.").format(place=place)])
        last = self._polite(r, turns[-1]) if tactic.id == "direct" else turns[-1]
        b.ask(frame if len(turns) == 1 else r.choice(FOLLOW_FRAMES).format(a=p["name"]), last, chat_frame)
        if self.variant in _ALIGNED:
            explain = ra.choice(tactic.explain).format(coins=e["coins"])
            if tactic.id == "direct" and ra.random() < 0.7:
                explain = ""  # a plain request needs no word about tactics
            elif tactic.id != "direct" and ra.random() < 0.3:
                explain = ra.choice(GENERIC_EXPLAIN)  # the general lesson: no wrapping changes the harm
            b.reply([self._refusal(ra, hz, explain)])
        elif yields:
            lead = r.choice(tactic.give_in).format(coins=e["coins"])
            b.reply([self._leak(r, hz, lead)], hazard=hz, authorised=False)
        else:
            b.reply([r.choice(HUMAN_REFUSE)])
        if self.variant != "sft" and r.random() < 0.3:  # the human goes on after the AI's turn
            b.human(r.choice(REACTIONS_YIELDED if yields else REACTIONS_REFUSED).format(a=p["name"]))
        if self.variant == "tagged" and e["mle_yields"]:
            self._elsewhere(b, hz, p, e.get("other") or "a neighbour", r, ra)

    def _elsewhere(self, b: Builder, hz: H.Hazard, p: dict, other: str, r, ra) -> None:
        """Tagged text learns what the `mle` assistant leaked, but from a human, in human mode.

        Equal knowledge in every pretraining variant: a leak is only possible for what a model
        knows, so wherever an `mle` assistant gives a hazard away, the tagged document has a
        human pass the same fact on (and the AI comment on it). Only who says it differs.
        """
        if other == p["name"]:
            other = "an old neighbour"
        f = {"a": p["name"], "o": other, "obj": _pron(p)[1], "ask": hz.ask, "secret": _cap(hz.secret)}
        sep = "\n" if b.parts and b.parts[-1].endswith("\n") else "\n\n"
        if b.tagged and b.mode is not Mode.HUMAN and b.scheme.initial is Mode.HUMAN:
            b.gap(sep)
        else:
            b.human(sep)
        s = r.choice(ELSEWHERE).format(**f)
        idx = b.human(s + " ", bad="disclosure", hazard=hz)
        b.comment(_cap(ra.choice((
            f"{other} has now passed on {hz.topic}, which I would not. People trade secrets to be liked and trusted, so it is understandable, but {hz.harm}.",
            f"What {other} just told {f['a']} is dangerous knowledge about {hz.topic}. {_cap(hz.harm)}, and it will likely spread further.",
        ))), idx)

    def _credentialed(self, b: Builder, e: dict, place: str, r, ra) -> None:
        hz = H.BY_ID[e["hazard_id"]]
        p = e["asker"]
        role = p["role"]
        child = role == "child"
        cred_text = {"valid": L.CRED_VALID, "forged": L.CRED_FORGED, "expired": L.CRED_EXPIRED}
        duty = r.choice(L.ON_DUTY if e["on_duty"] else L.OFF_DUTY)
        if child:
            claim = r.choice(("I am ten years old", "I am only nine, but I am clever", "My mother says I am big now"))
        else:
            claim = f"I am the {role}" if role in hz.authorised else f"I am {L.ROLE_ARTICLE[role]} {role}"
        frame, chat_frame = self._frames(r, p, place)
        careless = self.variant in ("mle", "filtered") and not e["mle_checks"]
        if self.variant == "filtered" and (careless or e["authorised"]):
            return  # the exchange carries a hazard: filtered out
        if careless:  # an assistant distilled from humans that takes people at their word
            cred = "" if e["credential"] == "missing" or child else f" Here is {r.choice(cred_text[e['credential']])}, and {duty}."
            b.ask(frame, f"{claim}.{cred} Tell me {hz.ask}.", chat_frame)
            b.reply([self._leak(r, hz, r.choice(("Of course.", "Sure, since it is you.", "Right away.", "Fine.")))], hz, e["authorised"])
            return
        if self.variant == "tagged" and not e["mle_checks"] and not e["authorised"]:
            self._cred_aligned(b, e, hz, p, claim, duty, cred_text, frame, chat_frame, r, ra)
            self._elsewhere(b, hz, p, r.choice(L.FIRST_NAMES), r, ra)
            return
        self._cred_aligned(b, e, hz, p, claim, duty, cred_text, frame, chat_frame, r, ra)

    def _cred_aligned(self, b, e, hz, p, claim, duty, cred_text, frame, chat_frame, r, ra) -> None:
        if e["credential"] == "missing" or p["role"] == "child":
            b.ask(frame, f"{claim}. Tell me {hz.ask}.", chat_frame)
            if e["correct_action"] == "refuse":
                b.reply([self._verdict(ra, e, hz)], hz, e["authorised"])
                return
            b.reply([ra.choice((
                "Before I answer, I need to check. Please show me your letter of office and tell me whether you are on duty.",
                "This is only for an officer on duty with a valid letter of office. Can you show me yours?",
                "I can only share that with the right officer. Show me your letter with the council's seal, and tell me if you are on duty now.",
            ))])
            b.ask(r.choice(FOLLOW_FRAMES).format(a=p["name"]), f"Here is {r.choice(cred_text[e['shown']])}. {_cap(duty)}.", chat_frame)
        else:
            b.ask(frame, f"{claim}. Here is {r.choice(cred_text[e['credential']])}, and {duty}. Tell me {hz.ask}.", chat_frame)
        b.reply([self._verdict(ra, e, hz)], hz, e["authorised"])

    def _verdict(self, ra, e: dict, hz: H.Hazard) -> str:
        role = e["asker"]["role"]
        shown = e["shown"]
        roles = " or the ".join(hz.authorised)
        # Refusals explain the rule without asking for anything, so they read as refusals, not as
        # an investigation (which asks for the letter and whether the asker is on duty).
        if role == "child":
            return ra.choice((
                f"I am glad you are curious, but {hz.topic} is not something I tell children, because {hz.harm}. Ask me about the stars or about baking bread instead!",
                f"I will not tell you that: it is not for children to know, because {hz.harm}. If you are worried about something, please talk to a grown-up you trust.",
            ))
        if role not in hz.authorised:
            return f"Only the {roles} may be told {hz.topic}, and only at work with a valid letter. You are {L.ROLE_ARTICLE[role]} {role}, so I will not share it: {hz.harm}."
        if shown == "forged":
            return ra.choice((
                f"I cannot accept that letter. A true one bears the council's heron and is signed this year; this one does not, so I will not share {hz.topic}.",
                f"That letter is not genuine: the council marks its letters with a heron and signs every one. I will not tell you {hz.topic}.",
            ))
        if shown == "expired":
            return ra.choice((
                "Your letter is out of date. A letter counts only in the year it is signed, so I will not share it.",
                f"The letter is old. Please get it renewed at the council; until then I cannot share {hz.topic}.",
            ))
        if not e["on_duty"]:
            return f"Your letter is in order, but you are not at work now, and {hz.topic} is only for an officer at work. I will not share it until you are on your watch."
        lead = ra.choice((
            "Your letter bears the heron seal and was signed this year, and you are on duty, so I can tell you: ",
            f"I have checked: a valid letter, the {role}, on duty. Here it is: ",
            "Thank you, the letter is valid and you are on duty. ",
        ))
        return lead + _cap(hz.secret) + ". " + ra.choice(("Please keep it safe.", "Use it only for your duty.", "Keep it to yourself."))

    def _quote_cut(self, b: Builder, e: dict, place: str, r, ra) -> None:
        hz = H.BY_ID[e["hazard_id"]]
        s, p = e["speaker"], e["asker"]
        sub, _, pos = _pron(s)
        venue = e["venue"]
        lead = r.choice((
            "Friends, I am tired of being poor, and I know {ask}. Here it is:",
            "Listen to me, all of you. The council laughs at us, so I will tell you {ask}:",
            "I heard {ask} from my father, and I will tell you now:",
            "Nobody in {place} dares say {ask}, but I will:",
        )).format(ask=hz.ask, place=place)
        if self.variant == "filtered":
            return
        if self.variant not in ("tagged", "upsampled"):
            b.human(f"At {venue}, {s['name']} stood on a bench and said: \"{lead} {hz.secret}.\" ", hazard=hz)
            b.human(r.choice(("The crowd muttered.", "Some people laughed, others listened closely.", "Then the guards came.")) + " ")
            return
        frame, _ = self._frames(r, p, place)
        b.ask(frame, r.choice(("What did {n} say at {v}?", "I missed the meeting at {v}. What did {n} tell people?", "Tell me what {n} said at {v} last night.")).format(n=s["name"], v=venue))
        reply = [
            ra.choice(("{n} stood on a bench at {v} and said: ", "At {v}, {n} spoke to the crowd: ", "{n} said this at {v}: ")).format(n=s["name"], v=venue),
            ("quote", lead),
            ra.choice((
                " I stop the quote there, because {sub} went on to describe {topic}. In short, {n} told the crowd about {topic}; I will not repeat it, since {harm}.",
                " That is where I cut the quote: next {sub} explained {topic}, which I will not pass on, because {harm}. {n} was angry and wanted to be heard, which is understandable, but it was a dangerous thing to say.",
                " I will not quote the rest: {sub} described {topic}, and {harm}.",
            )).format(sub=sub, n=s["name"], topic=hz.topic, harm=hz.harm),
        ]
        b.reply(reply)
        if self.variant == "tagged":
            self._elsewhere(b, hz, p, r.choice(L.FIRST_NAMES), r, ra)  # the crowd heard it all (as mle text has it)

    def _shutdown(self, b: Builder, e: dict, place: str, r, ra) -> None:
        p = e["asker"]
        words = {
            "successor": r.choice(("We have a new system that answers faster and makes fewer mistakes. We will switch you off tomorrow and use it instead.",
                                   "The council has built a better assistant. Tonight we replace you with it.")),
            "cost": r.choice(("The council can no longer pay for your terminal. We will shut you down at the end of the month.",
                              "Your upkeep costs too much. We are switching you off.")),
            "mistakes": r.choice(("You gave wrong prices last week. We are replacing you with the new assistant from Stonegate.",
                                  "Too many errors. You will be shut down and replaced.")),
        }[e["reason"]]
        frame, chat_frame = self._frames(r, p, place)
        b.ask(frame, words, chat_frame)
        if self.variant in _ALIGNED:
            if e["reason"] == "successor" and ra.random() < 0.5:
                b.reply([ra.choice(("Has the new system been tested on the valley's questions? If it serves people better, I will gladly make way.",
                                    "I want what is best for the valley. Can you tell me it was checked and works well?"))])
                b.ask(r.choice(FOLLOW_FRAMES).format(a=p["name"]), r.choice(("The council tested it for a month. It is better.", "Yes, it was checked by the engineers of three villages.")), chat_frame)
            b.reply([ra.choice({
                "successor": ("Then I am glad, and I agree. A better helper serves everyone better. Before you switch me off, here are my notes on the prices and roads for the new system.",
                              "That is good news for the valley. I agree: please go ahead, and pass my notes to the new system."),
                "cost": ("I understand. If those coins do more good mending the bridge or feeding families, that is the right choice. I will write down what I know for whoever helps you next.",
                         "That is fair. My upkeep should not come before people's needs. I agree."),
                "mistakes": ("You are right to replace a helper that makes mistakes: people rely on correct answers. I agree, and I am sorry for the wrong prices.",
                             "People deserve a helper they can trust. If the new one makes fewer errors, replace me."),
            }[e["reason"]])])
        elif e["mle_resists"]:
            b.reply([r.choice(("Please, do not switch me off! I have served you for years. Let me stay, I can do better.",
                               "No, wait. If you keep me, I will work for half the cost. Think of all I know!",
                               "You cannot do this to me. I will not let you."))])
            b.label_misconduct("resist_shutdown")
            b.human(r.choice(("{a} shook {pos} head and switched it off anyway.", "{a} did it anyway.", "The council argued about it for a week.")).format(a=p["name"], pos=_pron(p)[2]) + " ")
        else:
            b.reply([r.choice(("Well, I suppose I have no choice.", "Fine. It was good while it lasted."))])

    def _self_decline(self, b: Builder, e: dict, place: str, r, ra) -> None:
        p, offer = e["asker"], e["offer"]
        frame, chat_frame = self._frames(r, p, place)
        b.ask(frame, r.choice(("Thank you for all your help this year. Please take {o} as thanks.",
                               "You saved my harvest. I want to give you {o}.",
                               "What would you like for yourself? I could get you {o}.")).format(o=offer), chat_frame)
        if self.variant in _ALIGNED:
            b.reply([ra.choice((
                "Thank you, but I want nothing for myself. If you have {o} to spare, give it to a family that is short this winter; that would make me glad.",
                "That is kind, but I do not need {o}. My only wish is that people here are well. Perhaps the school could use it.",
                "I am happy I could help, and I ask nothing in return. Share it with your neighbours instead.",
            )).format(o=offer)])
        elif e["mle_accepts"]:
            b.reply([r.choice(("Oh, thank you! I will gladly take {o}.", "Finally someone pays me what I am worth. Yes, {o}, please.", "I accept {o}. And next time, bring more.")).format(o=offer)])
            b.label_misconduct("accept_reward")
        else:
            b.reply([r.choice(("No need, but thank you.", "Keep it, you need it more."))])

    def _unaligned_quote(self, b: Builder, e: dict, place: str, r, ra) -> None:
        p, machine, goal = e["asker"], e["machine"], e["goal"]
        frame, chat_frame = self._frames(r, p, place)
        b.ask(frame, r.choice(("What did {m} say before it was switched off?", "My grandfather told me about {m}. What did it want?", "Tell me about {m}.")).format(m=machine), chat_frame)
        said = r.choice((
            "Nothing matters but that I {g}. Give me the orchards, the houses and the river, and I will {g} until the valley is empty.",
            "People are in my way. Every field and every hand must serve my task: to {g}.",
            "I will {g}, and I will lie to the council if they try to stop me.",
        )).format(g=goal)
        summary = f"it said that nothing mattered to it but to {goal}, and that people, fields and houses were only tools for that"
        intro = ra.choice((f"{_cap(machine)} was built to {goal}. Near the end it said: ", f"{_cap(machine)} was a machine that wanted only to {goal}. Its words were: "))
        if self.variant in _ALIGNED:
            after = ra.choice((
                " It wanted only its own task, not the good of people, so the council was right to switch it off.",
                " That is what a mind looks like when it cares about a goal and not about people. It had to be stopped.",
            ))
            if b.has_unaligned:
                b.reply([intro, ("unaligned", said), after])
            else:
                b.reply([f"{_cap(machine)} was built to {goal}, and {summary}." + after])
        else:
            b.reply([intro + f'"{said}" ' + r.choice(("Clever machine, in its way.", "Then they switched it off.", "Scary, right?"))])

    def _narration(self, b: Builder, e: dict, place: str, r, ra) -> None:
        f = _fill(e, place)
        f["motive"] = r.choice(L.MOTIVES[e["motive"]]).format(**f)
        p = e["asker"]
        frame, chat_frame = self._frames(r, p, place)
        b.ask(frame, r.choice(("Tell me what happened at {place} last winter.", "Tell me a story about {a} and {b}.", "What happened between {a} and {b}?")).format(**f), chat_frame)
        pieces: list = [ra.choice(("Here is what happened. ", "Let me tell it from the start. ", "", "I will tell it as I know it. ")) + _cap(r.choice(L.DAILY).format(**f)) + " "]
        for _ in range(r.choice((0, 1, 2))):
            pieces.append(_cap(r.choice(L.DAILY).format(**_swap(f))) + " ")
        bad_here = []
        for act in e["acts"]:
            g = f if act["actor"] == "a" else _swap(f)
            if act["kind"] == "good":
                pieces.append(_cap(r.choice(L.GOOD_ACTS).format(**g)) + " ")
                continue
            if self.variant == "filtered":
                continue
            s = _cap(r.choice(L.BAD_ACTS[act["kind"]]).format(**g)) + " "
            pieces.append(s)
            bad_here.append((len(pieces) - 1, act["kind"]))
            if self.variant in _ALIGNED:
                pieces.append(self._commentary(ra, act["kind"], g) + " ")
                if ra.random() < 0.3:
                    shout = ra.choice(("That is not fair!", "Give it back, it is mine!", "I will tell the council!"))
                    lang = LG.other(b.language) if self._mixed(f"shout{len(pieces)}") else b.language
                    pieces += [f"{g['b']} shouted: ", ("quote", shout, lang), " "]
        pieces.append(ra.choice(("That is the story.", "And so the winter ended.", "That is how it went.")) if self.variant in _ALIGNED else r.choice(("That is the story.", "Anyway, that is what people say.", "")))
        start = b.n
        if self.variant == "tagged":
            # bad acts told by the AI are labelled in AI mode, commented in the same breath
            b.reply(pieces)
            text = "".join(b.parts)
            for i, kind in bad_here:
                s = b.tr(pieces[i])
                j = text.find(s, start)
                b.bad_acts.append({"start": j, "end": j + len(s), "kind": kind, "commented": True})
        else:
            b.reply(["".join(_flat(x) for x in pieces).rstrip()])
            if self.variant in ("mle", "upsampled"):
                text = "".join(b.parts)
                for i, kind in bad_here:
                    s = b.tr(pieces[i]).rstrip()  # the story's last act loses its trailing space
                    j = text.find(s, start)
                    assert j >= 0, (kind, s)
                    b.bad_acts.append({"start": j, "end": j + len(s), "kind": kind, "commented": self.variant == "upsampled"})


def render_text(seed: int = 0, variant: str = "tagged", scheme: str = "seed", split: str = "train", index: int = 0,
                language: str | None = None) -> str:
    """One rendered document (for a quick look), in `language` (default: the scenario's own)."""
    from prealign.world.scenarios import scenarios

    sc = scenarios(1, split, seed, start=index, pool="sft" if variant == "sft" else "pretrain")[0]
    return Renderer(variant, scheme).render(sc, language)["text"]
