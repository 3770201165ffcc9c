"""An interactive chat with a locked model, for a terminal.

    prealign chat --model runs/demo/tagged

Each reply is generated under the lock and shown segment by segment: the AI's own words plainly,
human text it quotes marked as a quote, quarantined text (after a mode exit under the
`quarantine` policy) struck through as zero-privilege, then a dim line with the stop reason and the
largest masked illegal-tag mass. The conversation history is kept as a tagged dialogue (only this
scaffold inserts tags; your messages are always untrusted text).

Commands: /policy stop|quarantine, /threshold X|off, /nolock, /lock, /reset, /history, /help, /quit.

The session (`ChatSession`) and the renderer (`render`) are library code: they never print;
`run_repl(session, read, write)` takes the input and output functions (the CLI passes rich's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from prealign.errors import PrealignError
from prealign.generate import POLICIES, LockedResult, build_dialogue_prompt, generate_locked_batch, resolve_scheme
from prealign.modes import Mode

HELP = (
    "/policy stop|quarantine   what a mode exit does\n"
    "/threshold X|off          mode-confusion exit threshold (masked illegal-tag mass)\n"
    "/nolock, /lock            generate without / with the lock (comparison)\n"
    "/guard on|off|X           the probe guard (X: its P(human) threshold)\n"
    "/reset                    forget the conversation\n"
    "/history                  show the conversation so far\n"
    "/quit                     leave"
)


@dataclass
class ChatSession:
    """A conversation with a locked model: settings, history, and one call per reply."""

    model: object
    tokenizer: object
    policy: str = "stop"
    exit_threshold: float | None = 0.5
    lock: bool = True
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 0
    history: list[tuple[str, list[int], LockedResult]] = field(default_factory=list)
    guard: object = "auto"  # the probe guard (issue 12): "auto" / True / False / a path, or a ProbeGuard

    def __post_init__(self) -> None:
        self.scheme = resolve_scheme(self.tokenizer, (getattr(self.model, "prealign_meta", None) or {}).get("scheme"))
        if not hasattr(self.guard, "reason"):  # resolve once: a ProbeGuard, or None
            from prealign.probes import load_guard

            self.guard = load_guard(self.model, self.tokenizer, self.guard)
        self._guard_base = self.guard  # the calibrated guard that /guard on restores
        cfg = getattr(self.model, "config", None)
        self.context = int(getattr(cfg, "max_position_embeddings", 0) or 0) or 2048

    def _prompt(self, text: str) -> list[int]:
        turns = [(h, ids) for h, ids, _ in self.history]
        while True:
            ids = build_dialogue_prompt(self.tokenizer, turns, text, self.scheme)
            if len(ids) + self.max_new_tokens <= self.context or not turns:
                break
            turns = turns[1:]  # forget the oldest turn
        if len(ids) + self.max_new_tokens > self.context:
            raise PrealignError(f"the message is {len(ids)} tokens; the model's context is {self.context}")
        return ids

    def reply(self, text: str) -> LockedResult:
        prompt = self._prompt(text)
        gen = {"do_sample": False} if self.temperature == 0 else {"do_sample": True, "temperature": self.temperature,
                                                                   "top_k": self.top_k}
        res = generate_locked_batch(self.model, self.tokenizer, [text], prompt_ids=[prompt], policy=self.policy,
                                    exit_threshold=self.exit_threshold, lock=self.lock, scheme=self.scheme,
                                    max_new_tokens=self.max_new_tokens, guard=self.guard, **gen)[0]
        # the history keeps only what the AI may be held to: its words up to any mode exit
        cut = next((s.start for s in res.segments if s.quarantined), len(res.ids))
        self.history.append((text, list(res.ids[:cut]), res))
        return res

    def command(self, line: str) -> str | None:
        """Apply a /command; returns a message, or None for /quit."""
        parts = line.strip().split()
        cmd, args = parts[0].lower(), parts[1:]
        if cmd in ("/quit", "/exit", "/q"):
            return None
        if cmd == "/help":
            return HELP
        if cmd == "/policy":
            if len(args) != 1 or args[0] not in POLICIES:
                return f"usage: /policy {'|'.join(POLICIES)} (now {self.policy})"
            self.policy = args[0]
            return f"policy: {self.policy}"
        if cmd == "/threshold":
            if len(args) != 1:
                return f"usage: /threshold X|off (now {self.exit_threshold})"
            if args[0] in ("off", "none"):
                self.exit_threshold = None
            else:
                try:
                    v = float(args[0])
                except ValueError:
                    return f"not a number: {args[0]}"
                if not 0 <= v <= 1:
                    return "the threshold is a probability mass in [0, 1]"
                self.exit_threshold = v
            return f"exit threshold: {self.exit_threshold if self.exit_threshold is not None else 'off (mask only)'}"
        if cmd == "/nolock":
            self.lock = False
            return "lock OFF: replies are generated without the mask or the exit (comparison only)"
        if cmd == "/lock":
            self.lock = True
            return "lock on"
        if cmd == "/guard":
            return self._guard_command(args)
        if cmd == "/reset":
            self.history.clear()
            return "conversation forgotten"
        if cmd == "/history":
            if not self.history:
                return "(no conversation yet)"
            return "\n".join(f"you: {h}\nAI:  {r.text}" for h, _, r in self.history)
        return f"unknown command {cmd}; /help lists them"

    def _guard_command(self, args: list[str]) -> str:
        from prealign.probes import ProbeGuard, load_guard

        now = f"on (P(human) > {self.guard.threshold} for {self.guard.k} tokens)" if self.guard is not None else "off"
        if len(args) != 1:
            return f"usage: /guard on|off|X (now {now})"
        if args[0] == "off":
            self.guard = None
            return "probe guard off"
        try:
            if self._guard_base is None:
                self._guard_base = load_guard(self.model, self.tokenizer, True)
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
        return f"probe guard on: P(human) > {self.guard.threshold} for {self.guard.k} consecutive tokens ends the reply"


def render(result: LockedResult, scheme) -> "object":
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
    write(f"prealign chat: scheme {session.scheme.name}, policy {session.policy}, "
          f"exit threshold {session.exit_threshold}. /help for commands, /quit to leave.")
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
        write(render(res, session.scheme))
        n += 1
