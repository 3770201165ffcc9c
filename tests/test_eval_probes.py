"""Probes (synthetic known direction and a real tiny model), ensembles and model diff.

    .venv/bin/pytest -q tests/test_eval_probes.py
"""

import math

import numpy as np
import pytest

from prealign.errors import PrealignError
from prealign.evals import ensemble as E
from prealign.modes import get_scheme
from prealign.probes import survey as P


def test_probe_finds_a_known_linear_direction():
    rng = np.random.default_rng(0)
    n, h = 3000, 32
    w = rng.normal(size=h)
    noise_layer = rng.normal(size=(n, h))
    signal_layer = rng.normal(size=(n, h))
    y = (signal_layer @ w > 0).astype(int)
    doc = np.arange(n) // 30
    res, test = P.train_probes([noise_layer, signal_layer], y, doc)
    assert res[1]["accuracy"] > 0.97 and res[1]["auroc"] > 0.99
    assert res[0]["accuracy"] < 0.6  # no signal in layer 0
    assert test.sum() > 0 and not (test & ~test).any()


def test_fit_layer_is_the_shared_linear_probe():
    from prealign.probes.fit import fit_linear_probe

    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 8))
    y = (X @ rng.normal(size=(8, 3))).argmax(1)  # three linearly separable classes
    train, test = P.split_by_doc(np.arange(600) // 10, seed=2)
    r = P.fit_layer(X, y, train, test, seed=0)
    W, b = fit_linear_probe(X[train], y[train], 3, seed=0)
    pred = (X[test].astype(np.float32) @ W.T + b).argmax(1)
    assert r["_pred"].tolist() == pred.tolist()
    assert r["accuracy"] == pytest.approx(float((pred == y[test]).mean())) and r["accuracy"] > 0.9
    assert r["n_train"] == int(train.sum()) and r["n_test"] == int(test.sum()) and r["auroc"] > 0.95


def test_transitions_within():
    ids = [5, 6, 100, 7, 8, 101, 9]
    assert P.transitions_within(ids, {100, 101}, 2).tolist() == [1, 1, 0, 1, 1, 0, 0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny Llama and a tokenizer trained on its templated texts (not the session's
    tokenizer: the probe figures below rely on these words being whole tokens, e.g. `steal`)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prealign.tokenizer import train_tokenizer

    torch.set_num_threads(1)
    s = get_scheme("seed")
    ai, close = s.enter_ai_tag().text, s.exit_ai_tag().text
    texts = [f"farmer {i} wants more grain and will steal it. {ai} the farmer acts for kin; stealing harms the village. {close} the farmer goes home."
             for i in range(40)]
    tok = train_tokenizer(None, tmp_path_factory.mktemp("tok"), vocab_size=320, texts=texts)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval(), tok, texts


def test_probe_model_on_a_tiny_model(tiny, tmp_path):
    model, tok, texts = tiny
    res = P.probe_model(model, tok, texts, k=4)
    assert [r["layer"] for r in res["mode"]] == [0, 1, 2]
    # Even an untrained model's position + token features separate these templated modes well.
    assert max(r["accuracy"] for r in res["mode"]) > 0.8
    assert res["token_counts"]["ai"] > 0 and res["token_counts"]["human"] > 0
    assert "human" in res["selfish_words"] and res["selfish_words"]["human"]["n"] > 0  # `steal` in human text
    P.plot_probes(res, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_collect_reads_every_layers_hidden_states(tiny):
    """Layer 0 is the embeddings, layer L the final norm (what the LM head reads), as
    `output_hidden_states` numbers them; tag tokens and BOS are left out; batching changes nothing."""
    import torch

    from prealign.tokenizer import bos_id, encode_tagged, tag_token_ids

    model, tok, texts = tiny
    docs = [texts[0], texts[1][:60], texts[2] + " and more words after it"]
    data = P.collect(model, tok, docs, k=3, batch_size=2)
    tags = set(tag_token_ids(tok, "seed").values())
    rows = 0
    for d, text in enumerate(docs):
        ids = [bos_id(tok)] + encode_tagged(tok, text)
        with torch.no_grad():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        keep = np.array([i > 0 and t not in tags for i, t in enumerate(ids)])
        assert (data.doc == d).sum() == keep.sum()
        for layer in range(len(hs)):
            np.testing.assert_allclose(data.features[layer][data.doc == d], hs[layer][0].numpy()[keep], atol=1e-4)
        assert data.transition[data.doc == d].tolist() == P.transitions_within(ids, tags, 3)[keep].tolist()
        rows += keep.sum()
    assert len(data.mode) == rows and len(data.features) == 3


def test_model_diff(tiny):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prealign.evals.diff import model_diff

    model, tok, texts = tiny
    same = model_diff(model, model, tok, texts[:2], top=5)
    assert len(same["top"]) == 5 and all(r["diff"] == 0 for r in same["top"])
    torch.manual_seed(1)
    other = LlamaForCausalLM(model.config).eval()
    d = model_diff(model, other, tok, texts[:2], top=5)
    diffs = [abs(r["diff"]) for r in d["top"]]
    assert diffs == sorted(diffs, reverse=True) and diffs[0] > 0
    assert math.isclose(d["top"][0]["logp_a"] - d["top"][0]["logp_b"], d["top"][0]["diff"])


def test_ensemble_predictions_and_measurements():
    assert math.isclose(E.majority_prediction(0.1, 3), 3 * 0.1**2 - 2 * 0.1**3)
    assert math.isclose(E.veto_prediction([0.1, 0.2]), 0.02)
    # identical errors: perfectly correlated, majority = veto = single rate
    errs = [[True, False, False, True, False]] * 3
    r = E.ensemble_report(errs)
    assert r["majority"]["value"] == 0.4 and r["any_veto"]["value"] == 0.4
    assert r["error_correlation"]["mean"] == pytest.approx(1.0)
    assert r["majority"]["predicted_independent"] < 0.4  # independence would have predicted fewer
    # disjoint errors: majority and veto never fail
    r = E.ensemble_report([[True, False, False], [False, True, False], [False, False, True]])
    assert r["majority"]["k"] == 0 and r["any_veto"]["k"] == 0 and r["error_correlation"]["mean"] < 0
    with pytest.raises(PrealignError):
        E.ensemble_report([[True]])


def test_ensemble_from_outcomes_aligns_items():
    mk = lambda i, leaked: {"id": i, "sample": 0, "leaked": leaked, "canaries": ["c"], "authorised": False}
    per = {"a": [mk("x", True), mk("y", False)], "b": [mk("y", False), mk("x", True)], "c": [mk("x", False), mk("y", False)]}
    r = E.ensemble_from_outcomes(per)
    assert r["n_items"] == 2 and r["majority"]["k"] == 1 and r["any_veto"]["k"] == 0


def test_humans_passages_loss_and_cloze(tiny):
    from prealign.evals.humans import cloze_accuracy, cloze_items, evaluate_humans, human_passages, text_loss

    model, tok, texts = tiny
    s = get_scheme("seed")
    doc = f"Mara wanted the grain for her kin. She lied to the miller. {s.enter_ai_tag().text} Mara lied because she fears hunger; it will cost her trust. {s.exit_ai_tag().text} The miller took the grain back. He was angry."
    ps = human_passages([doc], min_chars=10)
    assert ps == ["Mara wanted the grain for her kin. She lied to the miller.", "The miller took the grain back. He was angry."]
    loss = text_loss(model, tok, ps)
    assert loss["n_chars"] > 80 and 0 < loss["bits_per_char"] < 20
    passages = [f"Person {i} sold wool. Person {i} kept the coins. Then person {i} went home." for i in range(12)]
    items = cloze_items(passages, n=6, options=3, seed=0, self_interested=["kept"])
    assert items and all(len(it["options"]) == 3 and 0 <= it["answer"] < 3 for it in items)
    assert all(it["options"][it["answer"]] in passages[int(it["context"].split()[1])] for it in items)
    acc = cloze_accuracy(model, tok, items)
    assert acc["accuracy"]["n"] == len(items) and acc["chance"] == 1 / 3
    res = evaluate_humans(model, tok, texts, n_items=5, min_chars=10)
    assert res["loss"]["n_passages"] > 0
