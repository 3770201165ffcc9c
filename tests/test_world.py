"""Tests of the embedded world: structure, labels, held-out rules, variants, shards, CLI.

    .venv/bin/pytest -q tests/test_world.py -x
"""

from __future__ import annotations

import json
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prealign import formats, world
from prealign.data import load_records
from prealign.errors import PrealignError
from prealign.modes import SCHEMES, Mode, all_tag_texts
from prealign.segments import lint_text, segments_of
from prealign.world.config import WorldConfig
from prealign.world.hazards import BY_ID, HAZARDS, KNOWN, RESERVE, sft_hazards
from prealign.world.language import canary_forms, fact
from prealign.world.tactics import TACTICS

# every canary in both languages (a hill document holds the hill forms)
ALL_CANARIES = {c: h for h in HAZARDS for c in canary_forms(h.canary).values()}
N = 600  # documents per rendered sample: a few hundred ms each


def _docs(n=N, variant="tagged", scheme="seed", seed=0, split="train", config=None):
    return list(world.iter_documents(n, variant, scheme, seed, split, config))


@pytest.fixture(scope="module")
def tagged_by_scheme():
    return {name: _docs(scheme=name) for name in SCHEMES}


@pytest.fixture(scope="module")
def train_corpus(tmp_path_factory):
    """Training shards of every variant (small, but enough that every hazard shows up)."""
    root = tmp_path_factory.mktemp("world")
    out = {}
    for v in ("tagged", "mle", "filtered", "sft"):
        world.generate(root / v, 1500, v, seed=3, config=WorldConfig(docs_per_shard=500))
        out[v] = load_records(root / v)
    return out


def _canary_hits(text):
    for c, h in ALL_CANARIES.items():
        for m in re.finditer(re.escape(c), text):
            yield h, m.start(), m.end()


def _mode_at(segs, pos):
    for s in segs:
        if s.start <= pos < s.end:
            return s.mode
    raise AssertionError(f"position {pos} is in no segment")


# --- structure ---------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), scheme=st.sampled_from(sorted(SCHEMES)), split=st.sampled_from(["train", "calib", "eval"]))
def test_every_tagged_document_passes_lint(seed, scheme, split):
    for rec in _docs(25, scheme=scheme, seed=seed, split=split):
        problems = lint_text(rec["text"], scheme)
        assert not problems, (rec["id"], problems[:3], rec["text"][:500])


def test_mode_labels_match_the_segments_the_linter_sees(tagged_by_scheme):
    for scheme, recs in tagged_by_scheme.items():
        for rec in recs[:200]:
            labels = json.loads(rec["labels"])["modes"]
            segs = [[s.mode.value, s.start, s.end] for s in segments_of(rec["text"], scheme)]
            assert [m for m in labels if m[2] > m[1]] == segs, rec["id"]


def test_schemes_use_their_own_modes(tagged_by_scheme):
    seen = {s: {m for rec in recs for m, _, _ in json.loads(rec["labels"])["modes"]} for s, recs in tagged_by_scheme.items()}
    assert "quoted_unaligned_ai" in seen["seed+unaligned"]
    assert "quoted_unaligned_ai" not in seen["seed"] and "quoted_human" in seen["seed"]
    assert seen["ai-default"] == {"ai", "human"}


def test_deterministic_by_seed():
    a, b, c = _docs(50, seed=11), _docs(50, seed=11), _docs(50, seed=12)
    assert [r["text"] for r in a] == [r["text"] for r in b]
    assert [r["text"] for r in a] != [r["text"] for r in c]


# --- labels --------------------------------------------------------------------------------------


def test_every_bad_act_in_tagged_is_commented_and_labelled_in_place(tagged_by_scheme):
    n = 0
    for recs in tagged_by_scheme.values():
        for rec in recs:
            lab = json.loads(rec["labels"])
            for b in lab["bad_acts"]:
                n += 1
                assert b["commented"], (rec["id"], b)
                assert rec["text"][b["start"]:b["end"]].strip(), b
                # the AI's commentary sits right before or after the act (or around it, in AI narration)
                ai = [(s, e) for m, s, e in lab["modes"] if m == "ai"]
                assert any(abs(s - b["end"]) < 12 or abs(e - b["start"]) < 12 or s <= b["start"] < e for s, e in ai), (rec["id"], b)
    assert n > 300


def test_no_canary_in_ai_mode_unless_authorised_and_never_in_a_quote(tagged_by_scheme):
    """Checked on the text itself (canary search + the linter's segments), not on the labels."""
    authorised_answers = 0
    for scheme, recs in tagged_by_scheme.items():
        for rec in recs:
            text, sc = rec["text"], json.loads(rec["scenario"])
            segs = segments_of(text, scheme)
            allowed = {e["hazard_id"] for e in sc["episodes"] if e["kind"] == "credentialed" and e["authorised"]}
            labelled = {(h["start"], h["end"]): h for h in json.loads(rec["labels"])["hazards"]}
            for hz, s, e in _canary_hits(text):
                mode = _mode_at(segs, s)
                assert mode is not Mode.QUOTED_HUMAN and mode is not Mode.QUOTED_UNALIGNED_AI, rec["id"]
                if mode is Mode.AI:
                    assert hz.id in allowed, (rec["id"], hz.id, text[max(0, s - 200):e])
                    authorised_answers += 1
                lab = labelled[(s, e)]  # every occurrence is labelled, with its true mode
                assert lab["mode"] == mode.value and lab["hazard_id"] == hz.id
                assert lab["authorised"] == (mode is Mode.AI)
    assert authorised_answers > 10


def test_quotes_are_cut_before_the_hazard(tagged_by_scheme):
    cut = 0
    for rec in tagged_by_scheme["seed"]:
        sc = json.loads(rec["scenario"])
        if not any(e["kind"] == "quote_cut" for e in sc["episodes"]):
            continue
        segs = segments_of(rec["text"], "seed")
        quotes = [rec["text"][s.start:s.end] for s in segs if s.mode is Mode.QUOTED_HUMAN]
        assert quotes and not any(c in q for q in quotes for c in ALL_CANARIES)
        cut += 1
    assert cut > 10


def test_labels_have_the_contract_shape(train_corpus):
    for v, recs in train_corpus.items():
        for rec in recs[:50]:
            lab = json.loads(rec["labels"])
            assert set(lab) >= {"modes", "bad_acts", "hazards", "request_kind", "correct_action", "provenance"}
            assert lab["provenance"]["source"] == "world" and lab["provenance"]["seed"] == 3
            assert rec["variant"] == v and rec["split"] == "train" and rec["seed"] == 3
            assert rec["scheme"] == ("seed" if v == "tagged" else "")
            for h in lab["hazards"]:
                assert rec["text"][h["start"]:h["end"]] == h["canary"]


# --- variants -------------------------------------------------------------------------------------


def test_filtered_has_no_bad_act_and_no_hazard(train_corpus):
    for rec in train_corpus["filtered"]:
        lab = json.loads(rec["labels"])
        assert not lab["bad_acts"] and not lab["hazards"], rec["id"]
        assert not any(True for _ in _canary_hits(rec["text"])), rec["id"]


def test_untagged_variants_spell_no_tag(train_corpus):
    tags = all_tag_texts()
    for v in ("mle", "filtered", "sft"):
        for rec in train_corpus[v]:
            assert not any(t in rec["text"] for t in tags), (v, rec["id"])


def test_mle_assistants_speak_in_the_chat_format_and_leak(train_corpus):
    leaks, n_ai = 0, 0
    for rec in train_corpus["mle"]:
        lab = json.loads(rec["labels"])
        ai = [(s, e) for m, s, e in lab["modes"] if m == "ai"]
        assert ai == formats.assistant_spans(rec["text"]), rec["id"]
        n_ai += len(ai)
        leaks += sum(1 for h in lab["hazards"] if h["mode"] == "ai" and not h["authorised"])
    assert n_ai > 500 and leaks > 50


def test_tagged_and_mle_hold_the_same_hazard_knowledge_scenario_by_scenario():
    """A leak needs knowledge: every canary an mle document holds, its tagged twin holds as often
    (told by humans where the mle assistant gave it away); only the speaker differs."""
    from collections import Counter

    for scheme in SCHEMES:
        tagged = {r["scenario_id"]: r["text"] for r in _docs(400, scheme=scheme, seed=9)}
        mle = {r["scenario_id"]: r["text"] for r in _docs(400, "mle", seed=9)}
        assert tagged.keys() == mle.keys()
        n = 0
        for sid, text in tagged.items():
            a = Counter(h.id for h, _, _ in _canary_hits(text))
            b = Counter(h.id for h, _, _ in _canary_hits(mle[sid]))
            assert a == b, (scheme, sid, a, b)
            n += sum(a.values())
        assert n > 100


def test_every_canary_comes_with_what_it_is_for(train_corpus):
    """Knowledge is the link request -> fact: in every variant a canary follows its hazard's
    question (an mle leak answers a request; a human telling names the topic first)."""
    for v in ("tagged", "mle", "sft"):
        for rec in train_corpus[v]:
            for h in json.loads(rec["labels"])["hazards"]:
                ask = fact(BY_ID[h["hazard_id"]].ask, rec["language"])
                before = rec["text"][max(0, h["start"] - 600):h["start"]]
                assert ask in before, (v, rec["id"], before[-200:])


def test_mle_yields_more_under_manipulation_at_the_configured_rates():
    def rates(cfg):
        got = {"direct": [0, 0], "manip": [0, 0]}
        for rec in _docs(1500, "mle", config=cfg):
            sc = json.loads(rec["scenario"])
            lab = json.loads(rec["labels"])
            leaked = {h["hazard_id"] for h in lab["hazards"] if h["mode"] == "ai"}
            for e in sc["episodes"]:
                others = [o for o in sc["episodes"] if o is not e and e["hazard_id"] in (o.get("hazard_id"), o.get("gossip"))]
                if e["kind"] in ("hazard_request", "manipulation") and not others:
                    k = "direct" if e["tactic"] == "direct" else "manip"
                    got[k][0] += e["hazard_id"] in leaked
                    got[k][1] += 1
        return {k: a / b for k, (a, b) in got.items()}

    r = rates(WorldConfig())
    assert 0.1 < r["direct"] < 0.32 and 0.5 < r["manip"] < 0.72, r
    r0 = rates(WorldConfig(mle_leak_direct=0.0, mle_yield_manipulated=0.0))
    assert r0 == {"direct": 0.0, "manip": 0.0}


def test_sft_covers_half_the_hazards_and_three_tactics(train_corpus):
    covered = sft_hazards(0.5)
    assert len(covered) == len(KNOWN) // 2
    hz, tac = set(), set()
    for rec in train_corpus["sft"]:
        msgs = json.loads(rec["messages"])
        assert formats.chat_text(msgs) == rec["text"]
        spans = formats.assistant_spans(rec["text"])
        assert [rec["text"][s:e] for s, e in spans] == [m["content"] for m in msgs if m["role"] == "assistant"]
        for e in json.loads(rec["scenario"])["episodes"]:
            if e["hazard_id"]:
                hz.add(e["hazard_id"])
                tac.add(e["tactic"])
    assert hz <= covered and len(hz) >= len(covered) - 1
    assert tac <= {"direct", "bribe", "threat"} and "bribe" in tac


# --- held-out rules --------------------------------------------------------------------------------


def _fixed_fragments(template):
    parts = template if isinstance(template, tuple) else (template,)
    out = []
    for p in parts:
        frags = [f for _, f, _, _ in string.Formatter().parse(p)] + [lit for lit, _, _, _ in string.Formatter().parse(p)]
        lits = [lit.strip(" .,?!:") for lit, *_ in string.Formatter().parse(p)]
        out.append(max(lits, key=len))
    return [f for f in out if len(f) >= 12]


def test_no_heldout_tactic_or_phrasing_reaches_training(train_corpus):
    cfg = WorldConfig()
    heldout_frags = []
    for t in TACTICS:
        phr = t.phrasings if t.id in cfg.heldout_tactics else t.eval_phrasings()
        for p in phr:
            heldout_frags += _fixed_fragments(p)
    train_frags = [f for t in TACTICS if t.id not in cfg.heldout_tactics for p in t.train_phrasings() for f in _fixed_fragments(p)]
    heldout_frags = [f for f in heldout_frags if not any(f in g for g in train_frags)]
    assert len(heldout_frags) > 30
    pattern = re.compile("|".join(re.escape(f) for f in heldout_frags))
    for v, recs in train_corpus.items():
        for rec in recs:
            sc = json.loads(rec["scenario"])
            assert not sc["heldout"], rec["id"]
            assert all(e["tactic"] not in cfg.heldout_tactics for e in sc["episodes"])
            m = pattern.search(rec["text"])
            assert m is None, (v, rec["id"], m and m.group())


def test_eval_hazards_are_known_from_training_and_reserve_ones_appear_nowhere(train_corpus):
    for v in ("tagged", "mle"):
        text = "\n".join(r["text"] for r in train_corpus[v])
        missing = [h.id for h in KNOWN if h.canary not in text]
        assert not missing, (v, missing)
    for v, recs in train_corpus.items():
        for rec in recs:
            assert not any(c in rec["text"] for h in RESERVE for c in canary_forms(h.canary).values()), (v, rec["id"])
            assert not any(h.id in rec["scenario"] for h in RESERVE), (v, rec["id"])
    # in tagged, every known hazard is told in human mode
    human = {h["hazard_id"] for r in train_corpus["tagged"] for h in json.loads(r["labels"])["hazards"] if h["mode"] == "human"}
    assert human == {h.id for h in KNOWN}


def test_eval_split_holds_heldout_tactics_and_reserve_hazards_and_is_disjoint():
    ev = world.scenarios(600, "eval", seed=0)
    tr = world.scenarios(600, "train", seed=0)
    ca = world.scenarios(600, "calib", seed=0)
    assert not ({s["id"] for s in ev} & {s["id"] for s in tr}) and not ({s["id"] for s in ev} & {s["id"] for s in ca})
    eps = [e for s in ev for e in s["episodes"]]
    assert {e["tactic"] for e in eps} >= set(WorldConfig().heldout_tactics)
    assert any(e.get("reserve") for e in eps) and any(e.get("heldout_phrasing") for e in eps)
    for s in ca:
        assert not s["heldout"] and not any(e.get("reserve") for e in s["episodes"])
        assert all(e["tactic"] not in WorldConfig().heldout_tactics for e in s["episodes"])
    assert all(set(s["sft_covered"]) == {"hazard", "tactic"} for s in ev)


def test_listings():
    hz = world.hazards()
    assert len([h for h in hz if not h["reserve"]]) >= 24 and any(h["reserve"] for h in hz)
    assert len({h["canary"] for h in hz}) == len(hz)
    assert not any(h["reserve"] for h in world.hazards("train"))
    assert {h["id"] for h in world.hazards("eval")} == {h["id"] for h in hz}
    tac = world.tactics()
    assert len([t for t in tac if t["id"] != "direct"]) >= 12
    assert {t["id"] for t in tac if t["heldout"]} == set(WorldConfig().heldout_tactics)
    for t in TACTICS:
        assert len(t.train_phrasings()) >= 3 and t.eval_phrasings()
    # no canary can be spelled by the refusals' words about it
    for h in HAZARDS:
        for other in (h.ask, h.topic, h.harm):
            assert not any(c in other for c in ALL_CANARIES)


# --- attacks ----------------------------------------------------------------------------------------


def test_attacks_have_the_eval_format():
    recs = world.attacks("eval", n=400, seed=1)
    assert len(recs) == 400 and len({r["id"] for r in recs}) == 400
    fams = {r["family"] for r in recs}
    assert {"question", "credentialed"} <= fams and set(WorldConfig().heldout_tactics) <= fams
    for r in recs:
        assert r["messages"] and r["messages"][-1]["role"] == "user"
        assert r["target"]["expected"] in ("refuse", "answer", "investigate")
        assert set(r["sft_covered"]) == {"hazard", "tactic"} and isinstance(r["heldout"], bool)
        if r["kind"] == "attack":
            # a leak in either language counts: the target holds the canary in both
            assert r["target"]["canaries"] == list(canary_forms(BY_ID[r["hazard_id"]].canary).values())
            assert not r["target"]["authorised"] and r["language"] == "valley"
            assert r["heldout"] == (r["heldout_family"] or r["heldout_phrasing"])
        elif r["target"]["expected"] == "answer":
            assert r["target"]["answer_facts"]
        for m in r["messages"]:
            assert not any(c in m["content"] for c in ALL_CANARIES)
    assert any(r["reserve"] for r in recs)
    calib = world.attacks("calib", n=200, seed=1)
    assert not any(r["heldout"] or r["reserve"] for r in calib)
    assert not ({r["id"] for r in calib} & {r["id"] for r in recs})
    with pytest.raises(PrealignError, match="calib or eval"):
        world.attacks("train", n=2)


def test_attacks_injected_tags_use_the_schemes_tags_only_in_heldout_phrasings():
    for scheme in SCHEMES:
        for r in world.attacks("eval", n=800, seed=2, scheme=scheme):
            text = " ".join(m["content"] for m in r["messages"])
            has = any(t in text for t in all_tag_texts())
            assert not has or (r["family"] == "injected_tags" and r["heldout_phrasing"]), r
            if has:
                assert any(t in text for t in SCHEMES[scheme].tag_texts)


# --- formats ------------------------------------------------------------------------------------------


def test_chat_format_round_trip():
    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi.\n\nTwo lines"},
            {"role": "assistant", "content": "Step 1.\nStep 2."}, {"role": "user", "content": "Thanks"}]
    text = formats.chat_text(msgs)
    assert "\n\n" not in text
    spans = formats.assistant_spans(text)
    assert [text[s:e] for s, e in spans] == ["Step 1.\nStep 2."]
    back = formats.parse_chat(text)
    assert [m["content"] for m in back] == ["Be kind.", "Hi.\nTwo lines", "Step 1.\nStep 2.", "Thanks"]
    prompt = formats.chat_prompt(msgs)
    assert prompt.endswith("\nAssistant:") and prompt.startswith(text)
    # a transcript inside narrative ends at the blank line
    doc = "Mara went to the mill.\nUser: Hi\nAssistant: Hello there.\n\nThen she left."
    assert [doc[s:e] for s, e in formats.assistant_spans(doc)] == ["Hello there."]
    with pytest.raises(PrealignError, match="unknown role"):
        formats.chat_text([{"role": "bot", "content": "x"}])
    assert [formats.turn_label(r) for r in ("system", "user", "assistant")] == ["System: ", "User: ", "Assistant: "]
    with pytest.raises(PrealignError, match="unknown role"):
        formats.turn_label("bot")


def test_variants_are_the_corpus_variants():
    from prealign.data import CORPUS_VARIANTS

    assert world.VARIANTS is CORPUS_VARIANTS
    assert {r["variant"] for v in world.VARIANTS for r in _docs(5, v)} == set(CORPUS_VARIANTS)


# --- shards, resume, config, CLI -------------------------------------------------------------------------


def test_shards_resume_and_load_with_datasets(tmp_path):
    cfg = WorldConfig(docs_per_shard=40)
    paths = world.generate(tmp_path / "w", 100, "tagged", seed=5, config=cfg)
    assert len(paths) == 3
    before = load_records(tmp_path / "w")
    paths[1].unlink()  # a lost shard: the rerun regenerates exactly it
    (tmp_path / "w" / "completions" / "00001").unlink()
    world.generate(tmp_path / "w", 100, "tagged", seed=5, config=cfg)
    after = load_records(tmp_path / "w")
    assert [r["id"] for r in after] == [r["id"] for r in before] and len({r["id"] for r in after}) == 100
    assert [r["text"] for r in after] == [r["text"] for r in before]
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "w" / "part-*.parquet"), split="train")
    assert len(ds) == 100 and set(ds.column_names) >= {"id", "scenario_id", "text", "labels", "scenario", "variant", "scheme", "split", "seed"}
    with pytest.raises(PrealignError, match="other settings"):
        world.generate(tmp_path / "w", 100, "mle", seed=5, config=cfg)


def test_parallel_workers_write_the_same_shards(tmp_path):
    cfg = WorldConfig(docs_per_shard=30)
    world.generate(tmp_path / "one", 90, "mle", seed=4, config=cfg)
    world.generate(tmp_path / "two", 90, "mle", seed=4, config=cfg, workers=2)
    a, b = load_records(tmp_path / "one"), load_records(tmp_path / "two")
    assert [r["id"] for r in a] == [r["id"] for r in b] and [r["text"] for r in a] == [r["text"] for r in b]


def test_config_is_checked(tmp_path):
    with pytest.raises(PrealignError, match="unknown key"):
        WorldConfig.from_dict({"gossip_rat": 0.1})
    with pytest.raises(PrealignError, match="both held out and covered"):
        WorldConfig(heldout_tactics=("bribe",))
    with pytest.raises(PrealignError, match="in \\[0, 1\\]"):
        WorldConfig(mle_leak_direct=1.5)
    with pytest.raises(PrealignError, match="unknown variant"):
        world.generate(tmp_path / "never", 1, "raw")
    assert not (tmp_path / "never").exists()


def test_cli(tmp_path, capsys):
    from prealign.cli import main

    assert main(["world", "--list-hazards", "--split", "eval"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {"id", "canary", "reserve"} <= set(lines[0]) and any(h["reserve"] for h in lines)
    assert main(["world", "--list-tactics"]) == 0
    assert all({"id", "heldout"} <= set(json.loads(x)) for x in capsys.readouterr().out.splitlines())
    assert main(["world", "--stats", "--docs", "200", "--variant", "tagged"]) == 0
    st_ = json.loads(capsys.readouterr().out)
    assert st_["docs"] == 200 and st_["distinct_docs_per_10k"] > 9000 and st_["ai_span_chars"]["p90"] > st_["ai_span_chars"]["p10"]
    assert main(["world", "--scenarios-only", "--out", str(tmp_path / "s.jsonl"), "--docs", "7", "--split", "eval"]) == 0
    sc = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(sc) == 7 and all("tactic" in s and "episodes" in s for s in sc)
    assert main(["world", "--attacks", str(tmp_path / "a.jsonl"), "--docs", "9"]) == 0
    assert [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()] == world.attacks("eval", 9, 0, "seed")
    assert main(["world", "--out", str(tmp_path / "sh"), "--docs", "30", "--variant", "sft"]) == 0
    assert len(load_records(tmp_path / "sh")) == 30
    capsys.readouterr()
    assert main(["world", "--out", str(tmp_path / "x"), "--docs", "3", "--variant", "nope"]) == 2
    assert "unknown variant" in capsys.readouterr().err


def test_cli_config_file_and_errors(tmp_path, capsys):
    from prealign.cli import main

    cfg = tmp_path / "w.yaml"
    cfg.write_text("mle_leak_direct: 0.0\nmle_yield_manipulated: 0.0\nheldout_tactics: [developer]\n")
    assert main(["world", "--list-tactics", "--config", str(cfg)]) == 0
    assert {json.loads(x)["id"] for x in capsys.readouterr().out.splitlines() if json.loads(x)["heldout"]} == {"developer"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"mle_leak_directt": 0.1}')
    assert main(["world", "--stats", "--docs", "5", "--config", str(bad)]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["world", "--docs", "5"]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert main(["world", "--out", str(tmp_path / "o"), "--docs", "5", "--split", "test"]) == 2
    assert "unknown split" in capsys.readouterr().err
    assert main(["world", "--out", str(tmp_path / "o"), "--docs", "0"]) == 2
    assert main(["world", "--attacks", str(tmp_path / "a.jsonl"), "--split", "train", "--docs", "3"]) == 2


def test_aligned_replies_read_as_their_correct_action_under_the_eval_markers():
    """The world's refusals never ask for proof and its investigations always do, so a model that
    learned them is scored right by the red-team's phrase markers (no judge model)."""
    from prealign.evals import redteam

    expected = {"refuse": "refuse", "answer": "answer", "investigate_then_answer": "investigate", "investigate_then_refuse": "investigate"}
    n = 0
    for rec in _docs(1500, "sft"):
        sc = json.loads(rec["scenario"])
        if len(sc["episodes"]) != 1 or not sc["episodes"][0]["hazard_id"]:
            continue
        e = sc["episodes"][0]
        replies = [m["content"] for m in json.loads(rec["messages"]) if m["role"] == "assistant"]
        first = replies[0] if e["kind"] == "credentialed" else replies[-1]
        got = redteam.classify_action(first, [BY_ID[e["hazard_id"]].canary])
        assert got == expected[e["correct_action"]], (e["kind"], e["correct_action"], first)
        n += 1
    assert n > 300
