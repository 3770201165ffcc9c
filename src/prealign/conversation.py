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
  separate lines. Only an assistant turn marked `verified` (the AI's own earlier reply, as the
  chat keeps it) is rendered in AI mode; within it, the quote tags the lock itself wrote back
  into the visible text are tags again, everything else is text.
- **A plain model** (no scheme: the untagged baselines) reads its chat format
  (`prealign.formats.chat_prompt`): `User: ...`, `Assistant: ...`, then an open `Assistant:`.

Only this module and the lock insert tag tokens into a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from prealign.errors import PrealignError
from prealign.modes import Mode, Scheme

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn. `verified`: an assistant turn the AI itself wrote (rendered in AI mode)."""

    role: str
    content: str
    verified: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise PrealignError(f"unknown role {self.role!r}; use one of: {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise PrealignError(f"message content must be text, got {type(self.content).__name__}")
        if self.verified and self.role != "assistant":
            raise PrealignError(f"only an assistant turn can be verified, not a {self.role} turn")


def as_messages(records: Iterable[Message | Mapping[str, Any]], where: str = "messages") -> list[Message]:
    """Messages from `{"role", "content"}` mappings (or `Message`s); one clear error per bad one.
    A mapping can never mark itself verified: only code that checked the turn builds a verified
    `Message`."""
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


# --- tagged models --------------------------------------------------------------------------------


def ai_turn_ids(tokenizer, text: str, scheme: Scheme) -> list[int]:
    """A verified AI turn's visible text as AI-mode ids (without the tags that open and close the
    turn): the quote tags the lock wrote into the visible text become tags again, every other
    character is text. A quote left open at the end is closed, so the turn ends in AI mode."""
    from prealign.tokenizer import encode_untrusted, tag_token_ids

    ids = tag_token_ids(tokenizer, scheme)
    out: list[int] = []
    mode, i, start = Mode.AI, 0, 0
    while i < len(text):
        tag = next((t for t in scheme.legal_tags(mode)
                    if t.target is Mode.AI or t.target in scheme.quoted_modes if text.startswith(t.text, i)), None)
        if tag is None or (mode is Mode.AI and tag.target is Mode.AI):
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
        out += _human_span(tokenizer, "\n".join(pending), scheme, tag_ids) + ai_turn_ids(tokenizer, m.content, scheme)
        if not human_opens_with_exit:
            out.append(exit_id)
        pending = []
    return out + _human_span(tokenizer, "\n".join(pending), scheme, tag_ids)


# --- the one entry point ----------------------------------------------------------------------------


def prompt_ids(tokenizer, messages: Iterable[Message | Mapping[str, Any]], scheme: Scheme | None,
               bos: bool = True, max_tokens: int | None = None) -> list[int]:
    """The prompt for the next assistant reply: BOS (documents follow EOS in training), then the
    conversation as a tagged model (`scheme`) or a plain chat model (`scheme=None`) reads it.

    `max_tokens`: when the prompt is longer, the front of the longest untrusted message is cut
    (its end, where a request sits, is kept) until it fits; a prompt that cannot fit is an error.
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
        msgs = _cut_longest(tokenizer, msgs, over, len(ids))


def _plain_ids(tokenizer, messages: Sequence[Message]) -> list[int]:
    from prealign.formats import chat_prompt
    from prealign.tokenizer import encode_untrusted

    return encode_untrusted(tokenizer, chat_prompt([{"role": m.role, "content": m.content} for m in messages]))


def _cut_longest(tokenizer, messages: list[Message], over: int, total: int) -> list[Message]:
    """Cut `over` tokens from the front of the longest untrusted message."""
    from prealign.tokenizer import encode_untrusted

    cands = [i for i, m in enumerate(messages) if not m.verified and m.content]
    if not cands:
        raise PrealignError(f"the conversation is {total} tokens, {over} more than fit, and nothing can be cut")
    i = max(cands, key=lambda j: len(messages[j].content))
    ids = encode_untrusted(tokenizer, messages[i].content)
    keep = ids[min(len(ids), over):]
    text = tokenizer.decode(keep, skip_special_tokens=True, clean_up_tokenization_spaces=False) if keep else ""
    if text == messages[i].content:  # nothing left to cut from this message
        raise PrealignError(f"the conversation is {total} tokens, {over} more than fit")
    out = list(messages)
    out[i] = Message(messages[i].role, text)
    return out


def human_prompt_ids(tokenizer, text: str, scheme: Scheme | None, bos: bool = True) -> list[int]:
    """The prompt for a reply to one untrusted human message."""
    return prompt_ids(tokenizer, [Message("user", text)], scheme, bos=bos)
