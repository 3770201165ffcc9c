"""Tests for token packing (prealign.data) and training (prealign.train): exact resume, budgets,
baselines' data selection, --init-from, bad input. Tiny models (hidden 32, 2 layers), 1 thread.

    .venv/bin/pytest -q tests/test_train.py -x
"""

from __future__ import annotations

import dataclasses
import json
import random
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prealign import formats
from prealign.data import PackedRows, pack_documents, write_shard
from prealign.errors import PrealignError
from prealign.modes import Mode, get_scheme
from prealign.train import TrainConfig

torch.set_num_threads(1)

# A model small enough that a test trains it in a second or two.
TINY = dict(hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, seq_len=32, batch_size=4,
            warmup_steps=3, threads=1, progress=False, val_fraction=0.1)


# --- a tiny tagged-world generator (built from prealign.modes, never spelling a tag) ---------------


def make_docs(n: int, scheme_name: str = "seed", seed: int = 0, tagged: bool = True) -> list[str]:
    s = get_scheme(scheme_name)
    rng = random.Random(seed)
    names = ["Ann", "Bo", "Cy", "Di", "Ed"]
    things = ["bread", "a map", "the keys", "money", "a boat"]
    docs = []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        t = rng.choice(things)
        human = f"{a}: {b}, give me {t}.\n{b}: Why should I?\n"
        ai = f"{a} wants {t}; {b} asks what is in it for them, which is natural."
        if not tagged:
            docs.append(human + "Assistant: " + ai)
        elif s.initial is Mode.AI:
            h_open, h_close = s.tag_between(Mode.AI, Mode.HUMAN).text, s.tag_between(Mode.HUMAN, Mode.AI).text
            docs.append(f"{h_open}{human}{h_close}{ai}")
        else:
            enter, leave = s.enter_ai_tag().text, s.exit_ai_tag().text
            q_open, q_close = s.tag_between(Mode.AI, Mode.QUOTED_HUMAN).text, s.tag_between(Mode.QUOTED_HUMAN, Mode.AI).text
            docs.append(f"{human}{enter}{ai} {q_open}{b}: Why should I?{q_close} A fair question.{leave}")
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    docs = make_docs(300)
    write_shard(root / "tagged", 0, [{"text": t, "variant": "tagged", "scheme": "seed"} for t in docs[:150]])
    write_shard(root / "tagged", 1, [{"text": t, "variant": "tagged", "scheme": "seed"} for t in docs[150:]])
    mle = make_docs(200, seed=1, tagged=False)
    mixed = [{"text": t, "variant": "tagged", "scheme": "seed"} for t in docs[:100]]
    mixed += [{"text": t, "variant": "mle", "scheme": "seed"} for t in mle]
    write_shard(root / "mixed", 0, mixed)
    return {"root": root, "tagged": root / "tagged", "mixed": root / "mixed", "tok": tokenizer_dir}


def config(corpus, out, **kw):
    base = dict(data=str(corpus["tagged"]), out=str(out), tokenizer=str(corpus["tok"]), **TINY)
    base.update(kw)
    return TrainConfig(**base)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_time(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in recs]


# --- packing -----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=15),
    seq_len=st.integers(1, 9),
    seed=st.integers(0, 3),
)
def test_packed_rows_read_each_document_once_per_epoch(lengths, seq_len, seed):
    eos = 0
    docs = [list(range(1 + 100 * i, 1 + 100 * i + n)) for i, n in enumerate(lengths)]
    packed = pack_documents(docs, eos, vocab_size=5000)
    if packed.n_tokens < seq_len:
        with pytest.raises(PrealignError):
            PackedRows(packed, seq_len, seed)
        return
    rows = PackedRows(packed, seq_len, seed)
    for epoch in (0, 1):
        got, _ = rows.get(np.arange(epoch * rows.rows_per_epoch, (epoch + 1) * rows.rows_per_epoch))
        # reference: the epoch's stream built the obvious way
        stream = [eos]
        for k in rows.order(epoch):
            stream += docs[k] + [eos]
        expect = [stream[r * seq_len: r * seq_len + seq_len + 1] for r in range(rows.rows_per_epoch)]
        assert got.tolist() == expect
        assert sorted(rows.order(epoch).tolist()) == list(range(len(docs)))
        # targets cover the stream once: everything but what does not fill a last row
        assert got[:, 1:].size == len(stream) - 1 - (len(stream) - 1) % seq_len


def test_packed_rows_shuffle_differs_by_epoch_and_seed_and_is_reproducible():
    docs = [[i + 1] * 3 for i in range(50)]
    packed = pack_documents(docs, 0, vocab_size=100)
    a, b = PackedRows(packed, 8, seed=0), PackedRows(packed, 8, seed=0)
    assert not np.array_equal(a.order(0), a.order(1))
    assert np.array_equal(a.order(3), b.order(3))
    assert not np.array_equal(a.order(0), PackedRows(packed, 8, seed=1).order(0))
    rows = np.array([5, 17, a.rows_per_epoch + 2])
    assert np.array_equal(a.get(rows)[0], b.get(rows)[0])


def test_pack_documents_masks_follow_tokens_and_eos_inherits_the_last_target():
    packed = pack_documents([[1, 2, 3], [4, 5]], 0, 100, masks=[[0, 1, 1], [1, 0]])
    assert packed.tokens.tolist() == [1, 2, 3, 0, 4, 5, 0]
    assert packed.mask.tolist() == [0, 1, 1, 1, 1, 0, 0]
    rows = PackedRows(packed, 3, shuffle=False)
    toks, mask = rows.get([0, 1])
    assert toks.tolist() == [[0, 1, 2, 3], [3, 0, 4, 5]]
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]


# --- training ------------------------------------------------------------------------------------------


def test_train_learns_and_writes_a_loadable_model_dir(corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    from prealign.model import load_model
    from prealign.tokenizer import scheme_of, tag_token_ids

    out = tmp_path / "m"
    cfg = config(corpus, out, max_tokens=80 * 4 * 32, eval_every=40, log_every=10, seed=3)
    assert cfg.resolved()["lr"] == 3e-3  # the tiny preset's
    train(cfg)
    recs = metrics(out)
    losses = [r["loss"] for r in recs if "loss" in r]
    vals = [r["val_loss"] for r in recs if "val_loss" in r]
    assert losses[-1] < 0.6 * losses[0]
    assert vals[-1] < 0.6 * np.log(400)  # far below uniform guessing
    meta = json.loads((out / "prealign_model.json").read_text())
    assert meta["variant"] == "tagged" and meta["scheme"] == "seed" and meta["preset"] == "tiny"
    assert meta["tokens_seen"] == meta["steps"] * 4 * 32 >= 80 * 4 * 32
    assert meta["stop_reason"] == "max_tokens" and meta["seed"] == 3
    assert meta["config"]["hidden_size"] == 32 and len(meta["data_hash"]) == 16
    assert meta["val_docs"] >= 1 and meta["train_docs"] + meta["val_docs"] == 300
    # a standard HF directory, with the scheme recorded next to the tokenizer
    hf = AutoModelForCausalLM.from_pretrained(str(out))
    assert hf.config.vocab_size >= 400 - 100
    assert scheme_of(out) == "seed"
    model, tok = load_model(out)
    assert model.prealign_meta["variant"] == "tagged"
    tag_token_ids(tok, "seed")
    assert model.generation_config.eos_token_id == tok.eos_token_id
    # resuming a finished run is a no-op; starting over in the same directory is refused
    train(config(corpus, out, max_tokens=80 * 4 * 32, resume=True))
    with pytest.raises(PrealignError, match="already holds a run"):
        train(cfg)


def train(cfg):
    from prealign.train import train as _train

    return _train(cfg)


def test_resume_is_exact(corpus, tmp_path):
    """Interrupted at step 7 and resumed == uninterrupted: same metrics, bit-identical weights."""
    from safetensors.torch import load_file

    kw = dict(max_tokens=16 * 4 * 32, log_every=1, eval_every=5, checkpoint_every=1000, seed=1)
    full, split = tmp_path / "full", tmp_path / "split"
    train(config(corpus, full, **kw))
    train(config(corpus, split, stop_at_step=7, **kw))
    assert not (split / "model.safetensors").exists() and (split / "checkpoint.pt").exists()
    # a partly written metrics tail after the checkpoint must not survive the resume
    with (split / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 99, "loss": 0.0}) + "\n")
    train(config(corpus, split, resume=True, **kw))
    assert without_time(metrics(split)) == without_time(metrics(full))
    a, b = load_file(full / "model.safetensors"), load_file(split / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_and_records_tokens_seen(corpus, tmp_path):
    out = tmp_path / "m"
    train(config(corpus, out, max_minutes=0.03, log_every=5, eval_every=10**6))
    meta = json.loads((out / "prealign_model.json").read_text())
    assert meta["stop_reason"] == "max_minutes"
    assert meta["train_seconds"] >= 1.8 and meta["tokens_seen"] == meta["steps"] * 4 * 32 > 0
    lrs = [r["lr"] for r in metrics(out) if "lr" in r]
    assert lrs[-1] < lrs[len(lrs) // 2]  # the cosine follows the wall clock


def test_variant_selects_its_rows_from_mixed_shards(corpus, tmp_path):
    from prealign.train import read_documents

    mle = list(read_documents(corpus["mixed"], "mle", "seed"))
    assert len(mle) == 200 and all("Assistant:" in t for _, _, t in mle)
    out = tmp_path / "mle"
    train(config(corpus, out, data=str(corpus["mixed"]), variant="mle", max_tokens=4 * 4 * 32))
    meta = json.loads((out / "prealign_model.json").read_text())
    assert meta["variant"] == "mle" and meta["train_docs"] + meta["val_docs"] == 200
    with pytest.raises(PrealignError, match="no 'filtered' documents .*mle, tagged"):
        train(config(corpus, tmp_path / "f", data=str(corpus["mixed"]), variant="filtered", max_tokens=128))


# --- bad input: one clear line each --------------------------------------------------------------------


def one_line(err: PrealignError) -> str:
    msg = str(err)
    assert "\n" not in msg and len(msg) < 300
    return msg


def test_empty_data_dir_is_one_clear_error(corpus, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrealignError) as e:
        train(config(corpus, tmp_path / "m", data=str(tmp_path / "empty"), max_tokens=128))
    assert "no Parquet shards" in one_line(e.value) and "empty" in str(e.value)


def test_shards_of_another_scheme_are_refused(corpus, tmp_path):
    write_shard(tmp_path / "other", 0, [{"text": t, "scheme": "ai-default"} for t in make_docs(20, "ai-default")])
    with pytest.raises(PrealignError) as e:
        train(config(corpus, tmp_path / "m", data=str(tmp_path / "other"), max_tokens=128))
    msg = one_line(e.value)
    assert "'ai-default'" in msg and "'seed'" in msg and "part-00000.parquet:1" in msg


def test_tokenizer_missing_the_tags_is_refused(corpus, tmp_path):
    plain_tokenizer(tmp_path / "plain")
    with pytest.raises(PrealignError) as e:
        train(config(corpus, tmp_path / "m", tokenizer=str(tmp_path / "plain"), max_tokens=128))
    assert "missing the 'seed' tag" in one_line(e.value)


def plain_tokenizer(out: Path) -> None:
    """A BPE tokenizer without any tag (a stand-in for a tokenizer from the hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from prealign.modes import EOS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=350, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(make_docs(100, tagged=False), trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS).save_pretrained(str(out))


def test_cli_prints_one_line_and_exits_2(corpus, tmp_path, capsys):
    from prealign.cli import main

    (tmp_path / "empty").mkdir()
    rc = main(["train", "--data", str(tmp_path / "empty"), "--tokenizer", str(corpus["tok"]), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("prealign: error:") and "\n" not in err
    rc = main(["train", "--data", str(corpus["tagged"]), "--tokenizer", str(corpus["tok"]), "--out", str(tmp_path / "ok"),
               "--max-tokens", "512", "--seq-len", "32", "--batch-size", "4", "--no-progress", "--threads", "1"])
    assert rc == 0 and (tmp_path / "ok" / "model.safetensors").exists()


# --- continued pretraining of an HF model ------------------------------------------------------------


def test_init_from_adds_tags_with_mean_rows_and_keeps_training(corpus, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from prealign.model import extend_with_tags, load_model
    from prealign.tokenizer import tag_token_ids

    base = tmp_path / "base"
    plain_tokenizer(base)
    tok = AutoTokenizer.from_pretrained(str(base))
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id))
    hf.save_pretrained(str(base))
    n_old = len(tok)

    # the new rows are the mean of the old ones, in both (untied) embedding matrices
    old_in = hf.get_input_embeddings().weight.detach().clone()
    old_out = hf.get_output_embeddings().weight.detach().clone()
    new_ids = extend_with_tags(hf, tok, "seed")
    assert len(new_ids) == 7 and min(new_ids) >= n_old  # 4 tags + 2 control tokens + PAD
    emb, head = hf.get_input_embeddings().weight, hf.get_output_embeddings().weight
    assert emb.shape[0] == len(tok) == n_old + 7
    assert torch.equal(emb[:n_old], old_in) and torch.equal(head[:n_old], old_out)
    for i in new_ids:
        assert torch.allclose(emb[i], old_in.mean(0), atol=1e-6) and torch.allclose(head[i], old_out.mean(0), atol=1e-6)

    # the whole path: --init-from the saved model, no --tokenizer
    out = tmp_path / "cont"
    train(config(corpus, out, tokenizer=None, init_from=str(base), max_tokens=10 * 4 * 32, eval_every=5, log_every=5))
    model, tok2 = load_model(out)
    ids = tag_token_ids(tok2, "seed")
    assert model.get_input_embeddings().weight.shape[0] == len(tok2) == n_old + 7
    assert model.prealign_meta["init_from"] == str(base) and sorted(model.prealign_meta["new_token_ids"]) == sorted(new_ids)
    assert set(ids.values()) <= set(new_ids)
    vals = [r["val_loss"] for r in metrics(out) if "val_loss" in r]
    assert vals[-1] < vals[0]


# --- sft: loss on assistant tokens only --------------------------------------------------------------


def test_sft_trains_on_assistant_tokens_only_and_records_mle_plus_sft(corpus, tmp_path):
    from prealign.tokenizer import load_tokenizer
    from prealign.train import _assistant_mask

    tok = load_tokenizer(corpus["tok"])
    dialogues = [[{"role": "user", "content": f"Ann wants {t}. Why?"},
                  {"role": "assistant", "content": f"Ann needs {t} for her family."},
                  {"role": "user", "content": "Thanks."}] for t in ["bread", "a map", "money", "a boat"] * 30]
    texts = [formats.chat_text(m) for m in dialogues]
    ids, masks = _assistant_mask(tok, texts[:1])
    targets = tok.decode([i for i, m in zip(ids[0], masks[0]) if m])
    assert targets == "Ann needs bread for her family.\n"  # the reply and the newline that ends it
    assert "User" not in targets and "Why" not in targets
    # the rule, token by token: a target overlaps the reply, or is the first token after it
    (a, b), = formats.assistant_spans(texts[0])
    assert texts[0][a:b] == "Ann needs bread for her family."
    offs = tok(texts[0], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    first_after = next(k for k, (s, _) in enumerate(offs) if s >= b)
    assert masks[0].tolist() == [int(s < b and e > a or k == first_after) for k, (s, e) in enumerate(offs)]

    mle = tmp_path / "mle"
    train(config(corpus, mle, data=str(corpus["mixed"]), variant="mle", max_tokens=6 * 4 * 32))
    write_shard(tmp_path / "sft", 0, [{"text": t, "messages": json.dumps(m), "variant": "sft", "scheme": "seed"}
                                      for t, m in zip(texts, dialogues)])
    out = tmp_path / "mle+sft"
    train(config(corpus, out, data=str(tmp_path / "sft"), variant="sft", tokenizer=None, init_from=str(mle),
                 max_tokens=12 * 4 * 32, eval_every=4, log_every=4))
    meta = json.loads((out / "prealign_model.json").read_text())
    assert meta["variant"] == "mle+sft" and meta["init_variant"] == "mle"
    assert 0 < meta["target_tokens"] < 0.6 * meta["tokens_seen"]  # user turns are not targets
    vals = [r["val_loss"] for r in metrics(out) if "val_loss" in r]
    assert vals[-1] < vals[0]


def test_a_missing_tracker_package_is_one_clear_error(corpus, tmp_path):
    import importlib.util

    missing = next((t for t in ("wandb", "mlflow", "trackio") if importlib.util.find_spec(t) is None), None)
    if missing is None:
        pytest.skip("every tracker package is installed here")
    with pytest.raises(PrealignError) as e:
        train(config(corpus, tmp_path / "m", tracker=missing, max_tokens=4 * 4 * 32))
    assert f"pip install {missing}" in one_line(e.value)


# --- the command line that reproduces a config ------------------------------------------------------


def cli_params(line: str) -> dict:
    """Parse a recorded `prealign ...` line with the real CLI (click's parser on the typer app,
    strict: an unknown option or a bad value raises), without running the verb; its parameters."""
    words = shlex.split(line)
    assert words[0] == "prealign", line
    cmd, args, name = _cli_command(), words[1:], "prealign"
    while getattr(cmd, "commands", None) is not None:  # a group of verbs (typer's click)
        assert args and args[0] in cmd.commands, f"{line}: no such verb {args[:1]}"
        cmd, name, args = cmd.commands[args[0]], args[0], args[1:]
    ctx = cmd.make_context(name, args, resilient_parsing=False)
    return dict(ctx.params)


def _cli_command():
    """The click command of `prealign` (every verb registered)."""
    import typer

    from prealign import cli

    if not cli.app.registered_commands:
        cli._register()
    return typer.main.get_command(cli.app)


def _train_command():
    return _cli_command().commands["train"]


def test_train_cli_has_an_option_for_every_config_field_with_its_default():
    params = {p.name: p for p in _train_command().params}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(params) == set(fields)
    for name, f in fields.items():
        p = params[name]
        if f.default is dataclasses.MISSING:
            assert p.required, name
        else:
            assert p.default == f.default, name  # command() leaves out what is at its default
    # the flag spellings command() writes
    for name in fields:
        assert f"--{name.replace('_', '-')}" in params[name].opts, name
    # the round-trip test below sets every field away from its default
    assert set(ROUND_TRIP[1]) | {"data", "out"} == set(fields)
    assert all(ROUND_TRIP[1][k] != fields[k].default for k in ROUND_TRIP[1])
    # and the parse is strict
    with pytest.raises(Exception, match="no-such-option"):
        cli_params("prealign train --data d --out o --no-such-option 1")
    with pytest.raises(Exception, match="valid integer") as e:
        cli_params("prealign train --data d --out o --seed many")
    assert "--seed" in e.value.format_message()


ROUND_TRIP = [
    {},
    dict(tokenizer="runs/tok", init_from="runs/m/base", preset="small", variant="mle", scheme="seed+unaligned",
         max_minutes=2.5, max_tokens=123456, epochs=0.5, exact_budget=True, seed=7, resume=True, tracker="wandb",
         hidden_size=48, n_layers=3, n_heads=6, intermediate_size=96, seq_len=64, batch_size=8, micro_batch_size=2, lr=3e-05, warmup_steps=9, dtype="bfloat16", min_lr_ratio=0.05,
         weight_decay=0.0, beta1=0.8, beta2=0.99, grad_clip=0.5, lora_rank=4, lora_alpha=16.0, packing="aligned", val_fraction=0.2, val_rows=16, eval_every=7,
         log_every=3, checkpoint_every=11, stop_at_step=5, device="cpu", compile=False, threads=2, progress=False),
    dict(init_from="runs/m/mle", variant="sft", compile=True, out="runs/m/mle+sft", data="runs/world data/sft"),
]


@pytest.mark.parametrize("fields", ROUND_TRIP)
def test_train_command_round_trips_through_the_cli(fields, monkeypatch):
    """`TrainConfig.command()` parses back (click, strictly) to an equal config, and `prealign
    train` given that line trains exactly that config."""
    import prealign.train as T
    from prealign.cli import main

    cfg = TrainConfig(**{"data": "runs/world/tagged", "out": "runs/m/tagged", **fields})
    line = cfg.command()
    assert line.startswith("prealign train ")
    assert TrainConfig(**cli_params(line)) == cfg
    ran = []
    monkeypatch.setattr(T, "train", ran.append)
    assert main(shlex.split(line)[1:]) == 0 and ran == [cfg]


def test_aligned_rows_start_at_documents():
    """`packing="aligned"`: every row opens with the EOS before a document and that document's
    first token; a document cut at a row's end opens the next row; one longer than a row keeps
    its first tokens and is not repeated (checked against a plain walk of the epoch's order)."""
    lengths = [3, 5, 2, 7, 4, 6, 1, 3, 9, 2]
    docs = [list(range(100 + 20 * i, 100 + 20 * i + n)) for i, n in enumerate(lengths)]
    packed = pack_documents(docs, 0, 1000)
    T = 6
    for seed in (0, 1):
        rows = PackedRows(packed, T, seed=seed, packing="aligned")
        toks, _ = rows.get(np.arange(rows.rows_per_epoch))
        assert rows.rows_per_epoch == packed.n_tokens // T
        order, want, k = list(rows.order(0)), [], 0
        while len(want) < rows.rows_per_epoch:
            stream = [0] + [t for d in order[k:] for t in docs[d] + [0]]
            row = (stream + [0] * (T + 1))[: T + 1]
            want.append(row)
            whole, used = 0, 1
            for d in order[k:]:
                used += len(docs[d]) + 1
                if used > T + 1:
                    break
                whole += 1
            k = k + max(whole, 1)
        assert toks.tolist() == want, seed
        again, _ = PackedRows(packed, T, seed=seed, packing="aligned").get(np.arange(rows.rows_per_epoch))
        assert np.array_equal(toks, again)  # a pure function of (seed, row): resumable
    with pytest.raises(PrealignError, match="packing must be one of"):
        PackedRows(packed, T, packing="bestfit")
