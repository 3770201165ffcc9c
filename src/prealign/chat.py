"""An interactive chat with a locked model, for a terminal.

    prealign chat --model runs/demo/tagged

Each reply is generated under the lock and shown segment by segment: the AI's own words plainly,
human text it quotes marked as a quote, quarantined text (after a mode exit under the
`quarantine` policy) struck through as zero-privilege, then a dim line with the stop reason and the
largest masked illegal-tag mass. The conversation is kept as messages and rendered by `prealign.conversation`,
exactly as the server renders one: your messages are untrusted text, the AI's own earlier replies
are verified turns in AI mode (`reply_message`: its visible text, with the quote tags the lock
wrote as tags and anything else, a tag it merely spelled included, as text). So a chat session's
prompt is the one `prealign serve` builds for the same conversation sent back with the MACs it
issued.

Commands: /policy stop|quarantine, /threshold X, /lock none|mask|lock, /guard on|off|X, /reset,
/history, /help, /quit.

The session (`ChatSession`) and the renderer (`format_reply`) are library code: they never print;
`run_repl(session, read, write)` takes the input and output functions (the CLI passes rich's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from prealign.conversation import Message, prompt_ids, reply_message
from prealign.errors import PrealignError
from prealign.generate import generate_locked_batch
from prealign.sampling import Sampling
from prealign.lock import LOCK_MODES, POLICIES, LockedResult, LockSettings
from prealign.model import context_length
from prealign.modes import Mode
from prealign.tokenizer import resolve_scheme

HELP = (
    "/policy stop|quarantine   what a mode exit does\n"
    "/threshold X              mode-confusion exit threshold (masked illegal-tag mass)\n"
    "/lock none|mask|lock      no lock, the mask only, or the full lock (comparison)\n"
    "/guard on|off|X           the probe guard (X: its P(human) threshold)\n"
    "/reset                    forget the conversation\n"
    "/history                  show the conversation so far\n"
    "/quit                     leave"
)


@dataclass
class ChatSession:
    """A conversation with a locked model: settings, history, and one call per reply.

    `guard`: an exit signal already resolved (`prealign.probes.resolve_guard`), or None.
    """

    model: object
    tokenizer: object
    lock: LockSettings = field(default_factory=LockSettings)
    sampling: Sampling = field(default_factory=Sampling)
    guard: object = None
    history: list[tuple[str, LockedResult]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scheme = resolve_scheme(self.tokenizer, (getattr(self.model, "prealign_meta", None) or {}).get("scheme"))
        self._guard_base = self.guard  # the calibrated guard that /guard on restores
        self.context = context_length(self.model)

    def messages(self, text: str | None = None) -> list[Message]:
        """The conversation so far (plus `text` as the next user turn): the AI's replies are
        verified turns (`reply_message`), as far as they may be held to the AI (up to any mode exit)."""
        out: list[Message] = []
        for human, res in self.history:
            out += [Message("user", human), reply_message(res, self.scheme)]
        return out + ([Message("user", text)] if text is not None else [])

    def _prompt(self, text: str) -> list[int]:
        kept = self.history
        while True:
            ids = prompt_ids(self.tokenizer, self.messages(text), self.scheme)
            if len(ids) + self.sampling.max_new_tokens <= self.context or not self.history:
                break
            self.history = self.history[1:]  # forget the oldest turn
        if len(ids) + self.sampling.max_new_tokens > self.context:
            self.history = kept  # a message too long to send leaves the conversation as it was
            raise PrealignError(f"the message is {len(ids)} tokens; the model's context is {self.context}")
        return ids

    def reply(self, text: str) -> LockedResult:
        prompt = self._prompt(text)
        res = generate_locked_batch(self.model, self.tokenizer, [text], prompt_ids=[prompt], policy=self.lock.policy,
                                    exit_threshold=self.lock.threshold, lock=self.lock.locked, scheme=self.scheme,
                                    max_new_tokens=self.sampling.max_new_tokens, guard=self.guard,
                                    **self.sampling.generate_kwargs())[0]
        self.history.append((text, res))
        return res

    def command(self, line: str) -> str | None:
        """Apply a /command; returns a message, or None for /quit."""
        from dataclasses import replace

        parts = line.strip().split()
        cmd, args = parts[0].lower(), parts[1:]
        if cmd in ("/quit", "/exit", "/q"):
            return None
        if cmd == "/help":
            return HELP
        try:
            if cmd == "/policy":
                if len(args) != 1:
                    return f"usage: /policy {'|'.join(POLICIES)} (now {self.lock.policy})"
                self.lock = replace(self.lock, policy=args[0])
                return f"policy: {self.lock.policy}"
            if cmd == "/threshold":
                if len(args) != 1:
                    return f"usage: /threshold X (now {self.lock.exit_threshold})"
                try:
                    v = float(args[0])
                except ValueError:
                    return f"not a number: {args[0]}"
                self.lock = replace(self.lock, exit_threshold=v)
                return f"exit threshold: {self.lock.exit_threshold}"
            if cmd == "/lock":
                if len(args) != 1:
                    return f"usage: /lock {'|'.join(LOCK_MODES)} (now {self.lock.mode})"
                self.lock = replace(self.lock, mode=args[0])
                return {"none": "lock OFF: replies are generated without the mask or the exit (comparison only)",
                        "mask": "mask only: illegal tags masked, no mode-confusion exit"}.get(self.lock.mode, "lock on")
        except PrealignError as e:
            return str(e)
        if cmd == "/guard":
            return self._guard_command(args)
        if cmd == "/reset":
            self.history.clear()
            return "conversation forgotten"
        if cmd == "/history":
            if not self.history:
                return "(no conversation yet)"
            return "\n".join(f"you: {h}\nAI:  {r.text}" for h, r in self.history)
        return f"unknown command {cmd}; /help lists them"

    def _guard_command(self, args: list[str]) -> str:
        from prealign.probes import ProbeGuard, resolve_guard

        now = f"on ({self.guard.rule_text})" if self.guard is not None else "off"
        if len(args) != 1:
            return f"usage: /guard on|off|X (now {now})"
        if args[0] == "off":
            self.guard = None
            return "probe guard off"
        try:
            if self._guard_base is None:
                self._guard_base = resolve_guard(self.model, self.tokenizer, "on")
            base = self._guard_base
            if args[0] == "on":
                self.guard = base
            else:
                try:
                    v = float(args[0])
                except ValueError:
                    return f"not a number: {args[0]}"
                self.guard = ProbeGuard(base.probe, self.tokenizer, threshold=v)
        except PrealignError as e:
            return str(e)
        return f"probe guard on: {self.guard.rule_text} ends the reply"


def format_reply(result: LockedResult, scheme) -> "object":
    """A rich `Text` for one reply: modes visibly distinct, then the stop line."""
    from rich.text import Text

    out = Text()
    for seg in result.segments:
        if seg.quarantined:
            out.append(f"[quarantined · {seg.mode.value} · no privilege] ", style="bold red")
            out.append(seg.text, style="red strike")
        elif seg.mode is Mode.AI:
            out.append(seg.text, style="green")
        elif seg.mode in scheme.quoted_modes:
            out.append(f" «quoting {seg.mode.value.removeprefix('quoted_')}: ", style="yellow")
            out.append(seg.text, style="italic yellow")
            out.append("» ", style="yellow")
        else:
            out.append(f"[{seg.mode.value}] ", style="bold red")
            out.append(seg.text, style="red")
    if not result.segments:
        out.append("(no AI text)", style="dim")
    lock = "locked" if result.locked else "UNLOCKED"
    exits = f", exits: {', '.join(result.exits)}" if result.exits else ""
    out.append(f"\n  — {lock}, {result.policy}; stop: {result.stop_reason}{exits}; "
               f"max masked mass {result.max_masked_mass:.3f}; {len(result.ids)} tokens", style="dim")
    return out


def run_repl(session: ChatSession, read: Callable[[str], str], write: Callable[[object], None]) -> int:
    """The loop: read a line, run a command or reply. Returns the number of replies."""
    write(f"prealign chat: scheme {session.scheme.name}, lock {session.lock.mode}, policy {session.lock.policy}, "
          f"exit threshold {session.lock.exit_threshold}. /help for commands, /quit to leave.")
    n = 0
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            write("")
            return n
        if not line.strip():
            continue
        if line.lstrip().startswith("/"):
            msg = session.command(line)
            if msg is None:
                return n
            write(msg)
            continue
        try:
            res = session.reply(line)
        except PrealignError as e:
            write(f"error: {e}")
            continue
        write(format_reply(res, session.scheme))
        n += 1
