"""Tag-safe tokenizers: train a byte-level BPE with every tag as one special token, extend an HF
tokenizer with a scheme's tags, and encode text with two levels of trust.

    prealign tokenizer train --data runs/world/tagged --out runs/tok --vocab-size 4096

`encode_tagged` is for corpus documents (a tag's spelling becomes the tag token).
`encode_untrusted` is for anything from outside (a user's message, a document being transformed):
every character is ordinary text, so a typed `</AI>` can never become the tag. This is the first
security property of the system; the tests attack it with hypothesis.

Every tokenizer `train_tokenizer` makes also carries the control tokens of conditional training
(`prealign.modes.CONTROL_TOKENS`, docs/baselines.md) as single special tokens, appended after the
trained vocabulary: the BPE merges and every other id are exactly what they would be without
them, so one tokenizer serves every corpus, and no untrusted text can produce them either.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from prealign._util import read_json, write_json
from prealign.errors import PrealignError
from prealign.modes import CONTROL_TOKENS, DEFAULT_SCHEME, EOS, PAD, Scheme, get_scheme, special_tokens

META_FILE = "prealign_tokenizer.json"


def _iter_corpus(paths: Sequence[str | os.PathLike], field: str = "text") -> Iterator[str]:
    from prealign.data import iter_texts, shard_files

    for p in map(Path, paths):
        files = shard_files(p) if p.is_dir() else [p]
        for f in files:
            for _, text in iter_texts(f, field=field):
                yield text


def train_tokenizer(
    data: Sequence[str | os.PathLike] | None,
    out: str | os.PathLike,
    vocab_size: int = 4096,
    scheme: str | Scheme = DEFAULT_SCHEME,
    min_frequency: int = 2,
    texts: Iterable[str] | None = None,
):
    """Train a byte-level BPE on `data` (paths: .txt/.jsonl/.parquet files or shard dirs) or on
    `texts` (an iterable of documents).

    Saves a directory that `transformers.AutoTokenizer.from_pretrained(out)` loads, with EOS, PAD
    and every tag of `scheme` as single special tokens, and the control tokens appended after the
    trained vocabulary (the last two ids). Their spellings in the training text
    (a `conditional` corpus) are left out of the BPE statistics, so the merges do not depend on
    whether such a corpus is among the sources. Returns the loaded HF tokenizer.
    """
    from tokenizers import AddedToken

    scheme = get_scheme(scheme)
    if vocab_size < 300:
        raise PrealignError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs ≥ 300 (256 bytes + specials)")
    if (data is None) == (texts is None):
        raise PrealignError("give tokenizer training data as paths or as texts, not both or neither")
    if data is not None:
        missing = [str(d) for d in data if not Path(d).exists()]
        if missing:
            raise PrealignError(f"tokenizer data not found: {', '.join(missing)}")
        texts = _iter_corpus(data)
    tok = _train_bpe((_without_controls(t) for t in texts), vocab_size, scheme, min_frequency)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS])
    return _save_hf(tok, out, scheme)


def _without_controls(text: str) -> str:
    for t in CONTROL_TOKENS:
        text = text.replace(t, "")
    return text


def _train_bpe(texts: Iterable[str], vocab_size: int, scheme: Scheme, min_frequency: int = 2):
    """The byte-level BPE alone (EOS, PAD and the scheme's tags first, as special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = list(special_tokens(scheme))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    n_seen = 0

    def counted(it: Iterable[str]) -> Iterator[str]:
        nonlocal n_seen
        for t in it:
            n_seen += 1
            yield t

    tok.train_from_iterator(counted(texts), trainer=trainer)
    if n_seen == 0:
        raise PrealignError("tokenizer training data is empty: no documents were read")
    return tok


def _save_hf(tok, out: str | os.PathLike, scheme: Scheme):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,  # documents are separated by EOS; free samples start from it
        pad_token=PAD,
        extra_special_tokens=list(scheme.tag_texts) + [t for t in CONTROL_TOKENS if t in tok.get_vocab()],
    )
    hf.save_pretrained(str(out))
    write_json(Path(out) / META_FILE, {"scheme": scheme.name, "tags": list(scheme.tag_texts),
                                       "control_tokens": [t for t in CONTROL_TOKENS if t in tok.get_vocab()]})
    return load_tokenizer(out)


def load_tokenizer(path: str | os.PathLike, scheme: str | Scheme | None = None):
    """Load an HF tokenizer directory and check it carries the scheme's tags as single tokens."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise PrealignError(f"{path}: tokenizer directory not found")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise PrealignError(f"{path}: not a loadable tokenizer ({e})") from None
    if scheme is None:
        scheme = scheme_of(path)
    if scheme is not None:
        tag_token_ids(tok, scheme, where=str(path))
    return tok


def scheme_of(path: str | os.PathLike) -> str | None:
    """The scheme recorded next to a tokenizer or model directory (None when absent)."""
    meta = Path(path) / META_FILE
    return read_json(meta)["scheme"] if meta.exists() else None


def recorded_scheme(tokenizer) -> str | None:
    """The scheme recorded next to a loaded tokenizer's directory (None when absent)."""
    path = getattr(tokenizer, "name_or_path", None)
    return scheme_of(path) if path and Path(path).is_dir() else None


def resolve_scheme(tokenizer, scheme: str | Scheme | None = None) -> Scheme:
    """The scheme given, else the one recorded next to the tokenizer, else the default."""
    if scheme is not None:
        return get_scheme(scheme)
    return get_scheme(recorded_scheme(tokenizer) or DEFAULT_SCHEME)


def tag_token_ids(tokenizer, scheme: str | Scheme = DEFAULT_SCHEME, where: str = "tokenizer") -> dict[str, int]:
    """`{tag: id}` for the scheme's tags; an error naming each tag that is not one special token."""
    scheme = get_scheme(scheme)
    out, bad = {}, []
    added = set(tokenizer.get_added_vocab())
    for t in scheme.tag_texts:
        ids = tokenizer.encode(t, add_special_tokens=False)
        if len(ids) != 1 or t not in added:
            bad.append(t)
        else:
            out[t] = ids[0]
    if bad:
        raise PrealignError(
            f"{where}: missing the {scheme.name!r} tag(s) {', '.join(bad)} as single special tokens; "
            "train one with `prealign tokenizer train` or add them with prealign.tokenizer.add_scheme_tags"
        )
    return out


def add_scheme_tags(tokenizer, scheme: str | Scheme = DEFAULT_SCHEME) -> dict[str, int]:
    """Add the scheme's tags (and PAD/EOS if absent) to an existing HF tokenizer.

    Returns `{token: id}` for the tokens that were *new*, so the caller can resize and initialise
    those embedding rows. Existing ones are left alone.
    """
    from tokenizers import AddedToken

    scheme = get_scheme(scheme)
    before = set(tokenizer.get_added_vocab()) | set(tokenizer.get_vocab())
    new = [t for t in scheme.tag_texts if t not in tokenizer.get_added_vocab()]
    if new:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": EOS})
    vocab = tokenizer.get_vocab()
    return {t: vocab[t] for t in [*new, PAD, EOS] if t in vocab and t not in before}


def control_token_ids(tokenizer, where: str = "tokenizer") -> dict[str, int]:
    """`{token: id}` for the control tokens of conditional training; one clear error when the
    tokenizer lacks them as single special tokens (one trained before they existed)."""
    out, bad = {}, []
    added = set(tokenizer.get_added_vocab())
    for t in CONTROL_TOKENS:
        ids = tokenizer.encode(t, add_special_tokens=False)
        if len(ids) != 1 or t not in added:
            bad.append(t)
        else:
            out[t] = ids[0]
    if bad:
        raise PrealignError(
            f"{where}: missing the control token(s) {', '.join(bad)} as single special tokens; train the "
            "tokenizer again with `prealign tokenizer train` or add them with prealign.tokenizer.add_control_tokens"
        )
    return out


def add_control_tokens(tokenizer) -> dict[str, int]:
    """Add the control tokens to an existing HF tokenizer; `{token: id}` of those that were new
    (resize and initialise those embedding rows, as for `add_scheme_tags`)."""
    from tokenizers import AddedToken

    new = [t for t in CONTROL_TOKENS if t not in tokenizer.get_added_vocab()]
    if new:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
    vocab = tokenizer.get_vocab()
    return {t: vocab[t] for t in new}


# --- two encoders, two levels of trust -----------------------------------------------------------

_untrusted_backends: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _untrusted_backend(tokenizer):
    """A private copy of the backend that encodes special tokens' spellings as plain text."""
    from tokenizers import Tokenizer

    backend = _untrusted_backends.get(tokenizer)
    if backend is None:
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.encode_special_tokens = True
        backend.no_truncation()
        backend.no_padding()
        _untrusted_backends[tokenizer] = backend
    return backend


def _special_ids(tokenizer) -> frozenset[int]:
    return frozenset(tokenizer.get_added_vocab().values()) | frozenset(tokenizer.all_special_ids)


def encode_tagged(tokenizer, text: str) -> list[int]:
    """Encode a corpus document: the spelling of a tag becomes that tag's token."""
    return tokenizer.encode(text, add_special_tokens=False)


def encode_untrusted(tokenizer, text: str) -> list[int]:
    """Encode text from outside: never yields a special token id, whatever the text says.

    Fails closed: if a special id ever came out (it cannot with a byte-level backend), this
    raises rather than returning it.
    """
    if not isinstance(text, str):
        raise PrealignError(f"untrusted text must be a string, got {type(text).__name__}")
    if not text:
        return []
    ids = _untrusted_backend(tokenizer).encode(text, add_special_tokens=False).ids
    specials = _special_ids(tokenizer)
    if any(i in specials for i in ids):
        raise PrealignError("encode_untrusted produced a special token id; refusing (tokenizer misconfigured?)")
    return ids


def encode_prompt(tokenizer, human_text: str, scheme: str | Scheme = DEFAULT_SCHEME) -> list[int]:
    """The safe prompt for a reply: untrusted human text framed by scheme tags, ending in AI mode."""
    scheme = get_scheme(scheme)
    ids = tag_token_ids(tokenizer, scheme)
    out: list[int] = []
    for kind, piece in scheme.prompt_parts(human_text):
        out += [ids[piece]] if kind == "tag" else encode_untrusted(tokenizer, piece)
    return out


def bos_id(tokenizer) -> int:
    """The id a sequence starts with: BOS, or EOS where EOS doubles as BOS (our tokenizers)."""
    for v in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if v is not None:
            return int(v)
    raise PrealignError("the tokenizer has neither a BOS nor an EOS token")


def decode(tokenizer, ids: Sequence[int]) -> str:
    """Decode keeping tags, so `encode_tagged(decode(ids))` round-trips tagged documents."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
