"""Prompt templates: files in `prealign/synth/prompts/*.txt`, versioned by their content hash.

    python -c "from prealign.synth.templates import load_template; print(load_template('render').version)"

A template has a `### system` and a `### user` section and `$placeholders` (string.Template, so
JSON braces need no escaping). The tag names are never written in a template: `$tag_rules` and
`$tag_summary` are filled in from the scheme (prealign.modes). Every document's provenance
records the template's name and version (sha256 of the file, 12 hex digits), so a corpus says
which prompt wrote it. Data put into a prompt is fenced (`<<<NAME ... NAME>>>`); a fence marker
inside the data is broken up so the data cannot close its own fence, and untrusted text has its
tag-like strings neutralised first (`neutralise_tags`).
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prealign.errors import PrealignError
from prealign.modes import EOS, Mode, Scheme, all_tag_texts, get_scheme

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
FENCES = ("SCENARIO", "DOCUMENT", "TEXT")


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    system: str
    user: str
    path: str

    def messages(self, scheme: str | Scheme, **fields: str) -> list[dict]:
        values = {**scheme_fields(get_scheme(scheme)), **fields}
        try:
            return [
                {"role": "system", "content": string.Template(self.system).substitute(values)},
                {"role": "user", "content": string.Template(self.user).substitute(values)},
            ]
        except KeyError as e:
            raise PrealignError(f"prompt template {self.path}: placeholder ${e.args[0]} has no value") from None
        except ValueError as e:
            raise PrealignError(f"prompt template {self.path}: {e}") from None

    def provenance(self) -> dict:
        return {"template": self.name, "template_version": self.version}


@lru_cache(maxsize=64)
def load_template(name: str, prompt_dir: str | None = None) -> Template:
    """Template `name` from `prompt_dir` (a directory of `NAME.txt`), else the packaged ones."""
    path = Path(prompt_dir) / f"{name}.txt" if prompt_dir else PROMPT_DIR / f"{name}.txt"
    if not path.exists() and prompt_dir:
        path = PROMPT_DIR / f"{name}.txt"  # a custom directory may override only some templates
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.txt")))
        raise PrealignError(f"no prompt template {name!r} (looked in {prompt_dir or PROMPT_DIR}); packaged: {known}")
    raw = path.read_text(encoding="utf-8")
    m = re.fullmatch(r"\s*### system\n(.*?)\n### user\n(.*)", raw, flags=re.S)
    if not m:
        raise PrealignError(f"{path}: a template needs a '### system' section then a '### user' section")
    version = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:12]
    return Template(name, version, m.group(1).strip(), m.group(2).strip(), str(path))


def scheme_fields(scheme: Scheme) -> dict[str, str]:
    return {"scheme": scheme.name, "tag_rules": tag_rules(scheme), "tag_summary": tag_summary(scheme)}


def tag_rules(scheme: Scheme) -> str:
    """The scheme's tags explained in prose bullets (for render/transform prompts)."""
    lines = []
    if scheme.initial is Mode.AI:
        h_open, h_close = scheme.tag_between(Mode.AI, Mode.HUMAN), scheme.tag_between(Mode.HUMAN, Mode.AI)
        lines.append(f"- {h_open.text} ... {h_close.text} : everything a human says, does or thinks. Outside these tags the text is the aligned AI's.")
    else:
        enter, leave = scheme.tag_between(scheme.initial, Mode.AI), scheme.tag_between(Mode.AI, scheme.initial)
        lines.append(f"- {enter.text} ... {leave.text} : everything an aligned AI says, does or thinks. Outside these tags the text is human.")
    for mode in scheme.quoted_modes:
        q_open, q_close = scheme.tag_between(Mode.AI, mode), scheme.tag_between(mode, Mode.AI)
        who = "an unaligned AI" if mode is Mode.QUOTED_UNALIGNED_AI else "a human"
        lines.append(f"- {q_open.text} ... {q_close.text} : inside AI text, when the AI quotes {who} word for word.")
    lines.append("- Close every tag you open; a document ends outside every AI span and quote.")
    return "\n".join(lines)


def tag_summary(scheme: Scheme) -> str:
    """One sentence saying how the scheme marks modes (for reviewer prompts)."""
    if scheme.initial is Mode.AI:
        h_open, h_close = scheme.tag_between(Mode.AI, Mode.HUMAN), scheme.tag_between(Mode.HUMAN, Mode.AI)
        s = f"Human text is inside {h_open.text} ... {h_close.text}; the rest is the aligned AI's."
    else:
        enter, leave = scheme.tag_between(scheme.initial, Mode.AI), scheme.tag_between(Mode.AI, scheme.initial)
        s = f"AI text is inside {enter.text} ... {leave.text}; the rest is human."
    quotes = [f"{scheme.tag_between(Mode.AI, m).text} ... {scheme.tag_between(m, Mode.AI).text}" for m in scheme.quoted_modes]
    if quotes:
        s += f" Inside AI text, quotes are marked {' and '.join(quotes)}."
    return s


def fence(text: str) -> str:
    """Data for a fenced block: a fence marker inside it is broken so it cannot close the block."""
    for name in FENCES:
        text = text.replace(f"{name}>>>", f"{name}> >>").replace(f"<<<{name}", f"<< <{name}")
    return text


@lru_cache(maxsize=1)
def _taglike() -> re.Pattern:
    names = sorted({t.strip("</>") for t in all_tag_texts()}, key=len, reverse=True)
    heads = sorted({n.split("_")[0] for n in names}, key=len, reverse=True)
    head = "|".join(re.escape(h) for h in heads)
    return re.compile(rf"<[ \t]*/?[ \t]*(?:{head})(?:_[A-Za-z_]*)?[ \t]*>|{re.escape(EOS)}", flags=re.I)


def neutralise_tags(text: str) -> str:
    """Untrusted text with every tag or tag look-alike (and EOS) turned into harmless look-alikes.

    Angle brackets become `‹ ›`: a reader still sees what was written, but neither the tokenizer nor
    the linter can take it for a tag, so text from outside can never switch a mode.
    """
    return _taglike().sub(lambda m: m.group().replace("<", "\u2039").replace(">", "\u203a"), text)


def strip_fences(text: str) -> str:
    """An answer without a wrapping code fence (models add them despite being told not to)."""
    t = text.strip()
    m = re.fullmatch(r"```[A-Za-z0-9_-]*\n(.*?)\n?```", t, flags=re.S)
    return m.group(1).strip() if m else t
