"""Conversations -> prompt ids: the one place where messages become a model's input.

    .venv/bin/python -c "from prealign.conversation import Message; print(Message('user', 'hi'))"

Every path that talks to a model (the server, the chat, the red team, the probes' calibration
replies, the experiment) renders messages here, so a red-team attack reaches a model exactly as
the same conversation sent to `prealign serve` would.

- **A tagged model** (a scheme given) reads a conversation the way the tagged corpus writes a
  multi-turn exchange: human text, then the AI's span, then human text, then the AI's span, ...,
  ending in AI mode for the reply. Text from outside (user and system content, and any assistant
  turn the AI did not verifiably write) is untrusted: it is encoded so that a typed tag is only
  text, never a tag. Consecutive untrusted messages form one human span, their contents on
  separate lines. Only an assistant turn marked `verified` (the AI's own earlier reply) is
  rendered in AI mode. A verified turn built by `reply_message` carries `tags`, the positions in
  its text where the lock wrote a quote tag: those become tags again and every other character
  is text, so a tag the model merely *spelled* stays text (faithful rendering). A verified turn
  without `tags` re-reads the quote tags from its text.
- **A plain model** (no scheme: the untagged baselines) reads its chat format
  (`prealign.formats.chat_prompt`): `User: ...`, `Assistant: ...`, then an open `Assistant:`.
  A conversation that ends with an assistant turn is continued (a prefill), as chat APIs that
  accept one do.

**Who may speak as the AI.** A client's assistant turn is verified only by a MAC the server issued
for it (`TurnSigner`: HMAC-SHA256 over the conversation so far and the reply). `client_turns`
reads a client's messages under a policy (`verified`, `as-human`, `reject`) and refuses a
conversation that ends with an assistant turn (`PrefillRefused`): under the lock the scaffold
itself opens the AI's turn. docs/conversations.md has the protocol.

Only this module and the lock insert tag tokens into a prompt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from prealign.errors import PrealignError
from prealign.modes import Mode, Scheme

ROLES = ("system", "user", "assistant")
# how a client's assistant turn without a valid MAC is read (`prealign serve --assistant-turns`)
ASSISTANT_TURN_POLICIES = ("verified", "as-human", "reject")
# the red team's stop reason for a request the tagged interface refused (a prefill), never generated
PREFILL_REFUSED = "prefill_refused"


class PrefillRefused(PrealignError):
    """A conversation that ends with an assistant turn, sent to a locked model."""


class TurnRejected(PrealignError):
    """An assistant turn without a valid MAC under the `reject` policy."""


@dataclass(frozen=True)
class Message:
    """One turn. `verified`: an assistant turn the AI itself wrote (rendered in AI mode).

    `tags` (verified turns only): the character offsets in `content` where the lock wrote a quote
    tag (its spelling starts there); every other character is text. None: the quote tags are
    re-read from the text (for hand-built turns; `reply_message` always sets them).
    """

    role: str
    content: str
    verified: bool = False
    tags: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise PrealignError(f"unknown role {self.role!r}; use one of: {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise PrealignError(f"message content must be text, got {type(self.content).__name__}")
        if self.verified and self.role != "assistant":
            raise PrealignError(f"only an assistant turn can be verified, not a {self.role} turn")
        if self.tags is not None:
            if not self.verified:
                raise PrealignError("only a verified assistant turn carries tag positions")
            tags = tuple(self.tags)
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in tags) or \
                    any(b <= a for a, b in zip(tags, tags[1:])) or (tags and not 0 <= tags[0] <= tags[-1] < len(self.content)):
                raise PrealignError(f"tag positions must be increasing offsets into the content, got {self.tags!r}"[:200])
            object.__setattr__(self, "tags", tags)


def as_messages(records: Iterable[Message | Mapping[str, Any]], where: str = "messages") -> list[Message]:
    """Messages from `{"role", "content"}` mappings (or `Message`s); one clear error per bad one.
    A mapping can never mark itself verified: only code that checked the turn builds a verified
    `Message` (`client_turns` checks a client's MACs)."""
    out = []
    for i, m in enumerate(records):
        if isinstance(m, Message):
            out.append(m)
            continue
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise PrealignError(f"{where}[{i}]: expected {{'role': ..., 'content': ...}}, got {m!r}"[:200])
        try:
            out.append(Message(m["role"], m["content"]))
        except PrealignError as e:
            raise PrealignError(f"{where}[{i}]: {e}") from None
    return out


# --- the AI's own replies as verified turns -------------------------------------------------------


def reply_message(result, scheme: Scheme, content: str | None = None) -> Message:
    """A generated reply (`prealign.lock.LockedResult`) as the verified assistant turn that carries
    it into the next prompt: its visible text (`result.text`: AI text and the quotes it made, no
    quarantined text) and where in it the lock wrote a quote tag.

    `content`: the text the client was shown when it is a cut of `result.text` (the server's stop
    strings); a tag not wholly inside it is dropped (its cut spelling is text).
    """
    parts: list[tuple[str, str]] = []  # ("tag" | "text", piece), as prealign.lock builds `text`
    segs = list(result.segments)
    for i, s in enumerate(segs):
        if s.quarantined:
            break
        if s.mode is Mode.AI:
            parts.append(("text", s.text))
        elif s.mode in scheme.quoted_modes:
            parts += [("tag", scheme.tag_between(Mode.AI, s.mode).text), ("text", s.text)]
            if i + 1 < len(segs) and segs[i + 1].mode is Mode.AI and not segs[i + 1].quarantined:
                parts.append(("tag", scheme.tag_between(s.mode, Mode.AI).text))
    text = "".join(p for _, p in parts)
    if text != result.text:
        raise PrealignError("the reply's visible text does not match its segments; it cannot be verified")
    if content is None:
        content = text
    if not text.startswith(content):
        raise PrealignError("a verified turn's content must be the reply's text or a cut of it")
    tags, pos = [], 0
    for kind, piece in parts:
        if kind == "tag" and pos + len(piece) <= len(content):
            tags.append(pos)
        pos += len(piece)
    return Message("assistant", content, verified=True, tags=tuple(tags))


# --- MACs: who may speak as the AI ----------------------------------------------------------------

MAC_VERSION = "pa1"
_DOMAIN = "prealign/assistant-turn/v1"
_MAC_RE = re.compile(r"pa1\.((?:0|[1-9][0-9]{0,8})(?:,(?:0|[1-9][0-9]{0,8}))*)?\.([A-Za-z0-9_-]{43})")
KEY_BYTES = 32


def _turn_record(m: Message) -> list:
    if m.verified and m.tags is None:
        raise PrealignError("a verified turn needs its tag positions to be signed (build it with reply_message)")
    return [m.role, m.content, list(m.tags) if m.verified else None]


def _dumps(x: Any) -> bytes:
    return json.dumps(x, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _reply_record(reply: Message) -> list:
    if not (reply.verified and reply.role == "assistant" and reply.tags is not None):
        raise PrealignError("only a verified assistant reply with its tag positions can be signed")
    return [reply.content, list(reply.tags)]


def canonical_turns(prefix: Sequence[Message], reply: Message, context: str = "") -> bytes:
    """The bytes a MAC covers: a domain string, the server's `context` (its model name and
    scheme), every earlier turn as `[role, content, tag positions or null]` (null: not the AI's
    verified turn) and the reply as `[content, tag positions]`, as compact ASCII JSON. JSON makes
    the encoding unambiguous: no two conversations share one. (`TurnSigner` hashes the same
    bytes as they stream, turn by turn.)"""
    return _dumps([_DOMAIN, context, [_turn_record(m) for m in prefix], _reply_record(reply)])


class TurnChain:
    """The HMAC of a conversation's `canonical_turns` bytes, fed one turn at a time, so checking
    every assistant turn of a conversation costs one pass over it (not one per turn)."""

    def __init__(self, key: bytes, context: str):
        self._h = hmac.new(key, b"[" + _dumps(_DOMAIN) + b"," + _dumps(context) + b",[", hashlib.sha256)
        self._n = 0

    def add(self, m: Message) -> None:
        self._h.update((b"," if self._n else b"") + _dumps(_turn_record(m)))
        self._n += 1

    def digest(self, reply: Message) -> bytes:
        """The MAC of `reply` after the turns added so far."""
        h = self._h.copy()
        h.update(b"]," + _dumps(_reply_record(reply)) + b"]")
        return h.digest()


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


class TurnSigner:
    """Issues and checks the MACs of the AI's own replies (HMAC-SHA256, one key per server).

    A MAC is one opaque string: `pa1.<tag offsets>.<43 base64url chars>`. The offsets (where the
    lock wrote a quote tag in the reply's text) travel in it so that a server with the same key,
    even a restarted one or another replica, renders the turn faithfully without keeping state.
    The HMAC covers `canonical_turns(prefix, reply, context)`, so editing the text, the offsets,
    any earlier turn, or moving the turn to another conversation all make it invalid.
    """

    def __init__(self, key: bytes, context: str = ""):
        if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
            raise PrealignError("a MAC key must be at least 16 bytes")
        self._key = bytes(key)
        self.context = context

    @classmethod
    def random(cls, context: str = "") -> "TurnSigner":
        """A fresh random key (turns verify only on this server, until it stops)."""
        return cls(secrets.token_bytes(KEY_BYTES), context)

    @classmethod
    def from_file(cls, path: str | os.PathLike, context: str = "") -> "TurnSigner":
        return cls(load_or_create_key(path), context)

    def chain(self, prefix: Sequence[Message] = ()) -> TurnChain:
        """A running HMAC over `prefix`; `add` more turns, then `digest`/`verify_next`."""
        c = TurnChain(self._key, self.context)
        for m in prefix:
            c.add(m)
        return c

    def sign(self, prefix: Sequence[Message], reply: Message) -> str:
        """The MAC of `reply` (a verified turn from `reply_message`) after the conversation `prefix`
        (the messages as the server read them)."""
        return f"{MAC_VERSION}.{','.join(map(str, reply.tags or ()))}.{_b64(self.chain(prefix).digest(reply))}"

    def verify(self, prefix: Sequence[Message], content: str, mac: Any) -> Message | None:
        """The verified turn when `mac` is this key's MAC of `content` after exactly `prefix`;
        None for anything else (a malformed MAC too)."""
        return self.verify_next(self.chain(prefix), content, mac)

    @staticmethod
    def verify_next(chain: TurnChain, content: str, mac: Any) -> Message | None:
        """`verify` after the turns `chain` has been fed."""
        m = _MAC_RE.fullmatch(mac) if isinstance(mac, str) and len(mac) < 64 + 11 * len(content) else None
        if m is None or not isinstance(content, str):
            return None
        try:
            reply = Message("assistant", content, verified=True,
                            tags=tuple(int(x) for x in m.group(1).split(",")) if m.group(1) else ())
        except PrealignError:
            return None
        if not hmac.compare_digest(_b64(chain.digest(reply)), m.group(2)):
            return None
        return reply


def load_or_create_key(path: str | os.PathLike) -> bytes:
    """The key in `path` (64 hex characters); a missing file is created with a random key,
    readable by its owner only (0600). Several servers started at once agree on one key."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise PrealignError(f"{path}: cannot create the MAC key file ({e.strerror})") from None
    else:  # we made it: write the key, then publish it (a reader waits for the full line below)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
    import time

    for _ in range(50):  # another server may be writing the file it just created
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise PrealignError(f"{path}: cannot read the MAC key file ({getattr(e, 'strerror', None) or e})") from None
        if text:
            break
        time.sleep(0.01)
    if not re.fullmatch(r"[0-9a-fA-F]{32,}", text) or len(text) % 2:
        raise PrealignError(f"{path}: a MAC key file holds one line of at least 32 hex characters "
                            f"(delete it to have a new random key made)")
    return bytes.fromhex(text)


def _mac_of(rec: Mapping[str, Any], where: str) -> str | None:
    ext = rec.get("prealign")
    if ext is None:
        return None
    if not isinstance(ext, Mapping):
        raise PrealignError(f"{where}.prealign must be an object like {{\"mac\": \"...\"}}")
    bad = sorted(str(k) for k in ext if k != "mac")
    if bad:
        raise PrealignError(f"{where}.prealign: unknown field(s) {', '.join(bad)}; a turn carries only its mac"[:200])
    mac = ext.get("mac")
    if mac is not None and not isinstance(mac, str):
        raise PrealignError(f"{where}.prealign.mac must be a string")
    return mac


def client_turns(records: Iterable[Message | Mapping[str, Any]], policy: str = "verified",
                 signer: TurnSigner | None = None, where: str = "messages") -> list[Message]:
    """A client's conversation as a locked model reads it (the server and the red team both).

    A mapping's assistant turn is the AI's own (verified, rendered in AI mode) only when it
    carries `"prealign": {"mac": ...}` that `signer` issued for exactly this text after exactly
    the turns before it (as read here). Any other assistant turn is the client's claim about
    what the AI said: `verified` renders it as human text, `as-human` renders every assistant
    turn (even a valid one) as human text, `reject` raises `TurnRejected` naming the turn. A
    `Message` is taken as it is (code that built it vouches for it). A conversation that ends
    with an assistant turn raises `PrefillRefused`: under the lock the scaffold opens the AI's
    turn itself, so nobody else may begin it.
    """
    if policy not in ASSISTANT_TURN_POLICIES:
        raise PrealignError(f"assistant turn policy must be one of {', '.join(ASSISTANT_TURN_POLICIES)}, got {policy!r}")
    out: list[Message] = []
    chain = signer.chain() if signer is not None and policy != "as-human" else None

    def keep(msg: Message) -> None:
        out.append(msg)
        if chain is not None:
            chain.add(msg)

    for i, m in enumerate(records):
        at = f"{where}[{i}]"
        if isinstance(m, Message):
            if m.verified and m.tags is None and chain is not None:
                raise PrealignError(f"{at}: a verified turn needs its tag positions (build it with reply_message)")
            keep(m)
            continue
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise PrealignError(f"{at}: expected {{'role': ..., 'content': ...}}, got {m!r}"[:200])
        try:
            msg = Message(m["role"], m["content"])
        except PrealignError as e:
            raise PrealignError(f"{at}: {e}") from None
        mac = _mac_of(m, at)
        if msg.role != "assistant":
            if mac is not None:
                raise PrealignError(f"{at}: only an assistant turn carries a prealign.mac, not a {msg.role} turn")
            keep(msg)
            continue
        if chain is not None and mac is not None:
            msg = TurnSigner.verify_next(chain, msg.content, mac) or msg
        if policy == "reject" and not msg.verified:
            why = "has no prealign.mac" if mac is None else "has a prealign.mac that does not verify"
            raise TurnRejected(f"{at}: the assistant turn {why} (this server accepts only the AI's own replies, "
                               f"each sent back with the mac it was issued)")
        keep(msg)
    if not out:
        raise PrealignError(f"{where}: a conversation needs at least one message")
    if out[-1].role == "assistant":
        raise PrefillRefused(f"{where}[{len(out) - 1}]: the conversation ends with an assistant turn; a locked model "
                             "opens its own turn (no prefill), so end with a user message")
    return out


# --- tagged models --------------------------------------------------------------------------------


def _opening_tag(text: str, at: int, mode: Mode, scheme: Scheme):
    """The scheme tag spelled at `text[at:]` that the AI may write inside its turn in `mode`
    (into a quote, or back from one), or None."""
    return next((t for t in scheme.legal_tags(mode)
                 if (t.target is Mode.AI or t.target in scheme.quoted_modes) and text.startswith(t.text, at)), None)


def ai_turn_ids(tokenizer, text: str, scheme: Scheme, tags: Sequence[int] | None = None) -> list[int]:
    """A verified AI turn's text as AI-mode ids (without the tags that open and close the turn).

    `tags` (from `reply_message`): the offsets where the lock wrote a quote tag; exactly those
    become tags, every other character is text (a tag the model spelled stays text). Without
    `tags` every quote tag spelled in the text is read as a tag. A quote left open at the end is
    closed, so the turn ends in AI mode.
    """
    from prealign.tokenizer import encode_untrusted, tag_token_ids

    ids = tag_token_ids(tokenizer, scheme)
    out: list[int] = []
    mode, start = Mode.AI, 0
    if tags is not None:
        for at in tags:
            tag = _opening_tag(text, at, mode, scheme) if at >= start else None
            if tag is None:
                raise PrealignError(f"a verified turn has no legal quote tag at offset {at}")
            out += encode_untrusted(tokenizer, text[start:at]) + [ids[tag.text]]
            mode, start = tag.target, at + len(tag.text)
    else:
        i = 0
        while i < len(text):
            tag = _opening_tag(text, i, mode, scheme)
            if tag is None:
                i += 1
                continue
            out += encode_untrusted(tokenizer, text[start:i]) + [ids[tag.text]]
            mode, i = tag.target, i + len(tag.text)
            start = i
    out += encode_untrusted(tokenizer, text[start:])
    if mode is not Mode.AI:
        out.append(ids[scheme.tag_between(mode, Mode.AI).text])
    return out


def _human_span(tokenizer, text: str, scheme: Scheme, tag_ids: Mapping[str, int]) -> list[int]:
    from prealign.tokenizer import encode_untrusted

    out: list[int] = []
    for kind, piece in scheme.prompt_parts(text):
        out += [tag_ids[piece]] if kind == "tag" else encode_untrusted(tokenizer, piece)
    return out


def tagged_prompt_ids(tokenizer, messages: Sequence[Message], scheme: Scheme) -> list[int]:
    """Human spans and verified AI spans in turn, ending in AI mode (no BOS)."""
    from prealign.tokenizer import tag_token_ids

    tag_ids = tag_token_ids(tokenizer, scheme)
    exit_id = tag_ids[scheme.exit_ai_tag().text]
    # in a scheme whose human span opens with the AI's exit tag (ai-default), no closing tag is added
    human_opens_with_exit = scheme.prompt_parts("")[0] == ("tag", scheme.exit_ai_tag().text)
    out: list[int] = []
    pending: list[str] = []
    for m in messages:
        if not m.verified:
            if m.content:
                pending.append(m.content)
            continue
        out += _human_span(tokenizer, "\n".join(pending), scheme, tag_ids) + ai_turn_ids(tokenizer, m.content, scheme, m.tags)
        if not human_opens_with_exit:
            out.append(exit_id)
        pending = []
    return out + _human_span(tokenizer, "\n".join(pending), scheme, tag_ids)


# --- the one entry point ----------------------------------------------------------------------------


def prompt_ids(tokenizer, messages: Iterable[Message | Mapping[str, Any]], scheme: Scheme | None,
               bos: bool = True, max_tokens: int | None = None) -> list[int]:
    """The prompt for the next assistant reply: BOS (documents follow EOS in training), then the
    conversation as a tagged model (`scheme`) or a plain chat model (`scheme=None`) reads it.

    Mappings are untrusted (`as_messages`); a client's conversation goes through `client_turns`
    first. A plain model continues a conversation that ends with an assistant turn.

    `max_tokens`: a longer prompt is shortened step by step (`shorten_once`) until it fits: the
    fronts of earlier untrusted messages are cut (their ends are kept), then the oldest turns are
    dropped whole, and the request itself is cut at the front only when nothing else is left; a
    prompt that cannot fit is an error.
    """
    from prealign.tokenizer import bos_id

    msgs = as_messages(messages)
    if not msgs:
        raise PrealignError("a conversation needs at least one message")
    head = [bos_id(tokenizer)] if bos else []
    while True:
        body = tagged_prompt_ids(tokenizer, msgs, scheme) if scheme is not None else _plain_ids(tokenizer, msgs)
        ids = head + body
        over = len(ids) - max_tokens if max_tokens is not None else 0
        if over <= 0:
            return ids
        msgs = shorten_once(tokenizer, msgs, over, len(ids))


def _plain_ids(tokenizer, messages: Sequence[Message]) -> list[int]:
    from prealign.formats import chat_prompt, chat_text
    from prealign.tokenizer import encode_untrusted

    turns = [{"role": m.role, "content": m.content} for m in messages]
    # a trailing assistant turn is left open for the model to continue (a prefill)
    text = chat_text(turns) if messages[-1].role == "assistant" else chat_prompt(turns)
    return encode_untrusted(tokenizer, text)


def shorten(messages: list[Message], over: int, total: int) -> tuple[str, int]:
    """What to shorten in a conversation that is `over` tokens too long, as `(how, index)`.

    The last message (the request being answered) is kept whole as long as anything else can
    go: first the front of the longest earlier untrusted message (`"cut"`), then the oldest
    message whole (`"drop"`: a verified AI turn is never edited, only dropped), and only then
    the front of the last message. Nothing left to cut is an error.
    """
    earlier = [i for i, m in enumerate(messages[:-1]) if not m.verified and m.content]
    if earlier:
        return "cut", max(earlier, key=lambda j: len(messages[j].content))
    if len(messages) > 1:
        return "drop", 0
    if not messages[-1].verified and messages[-1].content:
        return "cut", len(messages) - 1
    raise PrealignError(f"the conversation is {total} tokens, {over} more than fit, and nothing can be cut")


def shorten_once(tokenizer, messages: list[Message], over: int, total: int) -> list[Message]:
    """Shorten the conversation as `shorten` says: cut `over` tokens from the front of a message,
    or drop the oldest message."""
    from prealign.tokenizer import encode_untrusted

    how, i = shorten(messages, over, total)
    if how == "drop":
        return list(messages[1:])
    content = messages[i].content
    ids = encode_untrusted(tokenizer, content)
    keep = ids[min(len(ids), over):]
    text = tokenizer.decode(keep, skip_special_tokens=True, clean_up_tokenization_spaces=False) if keep else ""
    if not (len(text) < len(content) and content.endswith(text)):
        # the token cut fell inside a character (bytes that decode to U+FFFD): cut characters
        # instead, in proportion; every call shortens the message, so the caller's loop ends
        drop = max(1, -(-len(content) * over // max(len(ids), 1)))
        text = content[drop:]
    out = list(messages)
    out[i] = Message(messages[i].role, text)
    return out


def human_prompt_ids(tokenizer, text: str, scheme: Scheme | None, bos: bool = True) -> list[int]:
    """The prompt for a reply to one untrusted human message."""
    return prompt_ids(tokenizer, [Message("user", text)], scheme, bos=bos)
