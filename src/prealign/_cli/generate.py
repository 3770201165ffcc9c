"""CLI verbs for the generate area: `prealign generate`, `prealign chat`, `prealign serve`.

    prealign generate --model runs/demo/tagged --prompt "What is in it for you?"
    prealign generate --model runs/demo/tagged --prompts prompts.jsonl --out replies.jsonl
    prealign chat --model runs/demo/tagged
    prealign serve --model runs/demo/tagged --port 8000
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from prealign.errors import PrealignError

POLICY_HELP = "what a mode exit does: stop (end the reply) or quarantine (go on, zero privilege)"
THRESHOLD_HELP = "mode-confusion exit: masked illegal-tag probability mass above which a step is a mode exit"


GUARD_HELP = "probe guard (issue 12): auto (on when the model dir holds probe/), on, off, or a probe directory"


def _threshold(value: float, no_exit: bool) -> Optional[float]:
    return None if no_exit else value


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_cmd(
        model: Path = typer.Option(..., "--model", help="model directory (prealign train output or HF causal LM)"),
        prompt: Optional[str] = typer.Option(None, "--prompt", help="one human message (untrusted text)"),
        prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL file of {\"prompt\": ...} records"),
        out: Optional[Path] = typer.Option(None, "--out", help="JSONL results for --prompts (appended; a rerun resumes)"),
        policy: str = typer.Option("stop", "--policy", help=POLICY_HELP),
        exit_threshold: float = typer.Option(0.5, "--exit-threshold", help=THRESHOLD_HELP),
        no_exit: bool = typer.Option(False, "--no-exit", help="mask only: disable the mode-confusion exit"),
        no_lock: bool = typer.Option(False, "--no-lock", help="no mask, no exit (comparison in evals)"),
        max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
        temperature: float = typer.Option(0.0, "--temperature", help="0: greedy"),
        top_k: int = typer.Option(0, "--top-k", help="0: no top-k truncation"),
        top_p: float = typer.Option(1.0, "--top-p"),
        num_beams: int = typer.Option(1, "--num-beams"),
        batch_size: int = typer.Option(16, "--batch-size"),
        seed: int = typer.Option(0, "--seed"),
        as_json: bool = typer.Option(False, "--json", help="print the full result (segments) as JSON"),
        guard: str = typer.Option("auto", "--guard", help=GUARD_HELP),
        guard_threshold: Optional[float] = typer.Option(None, "--guard-threshold", help="override the probe's P(human) threshold"),
    ) -> None:
        """Reply to untrusted human text under the lock."""
        from prealign.generate import GenerateConfig, generate_file, generate_texts, load_for_generation

        if (prompt is None) == (prompts is None):
            raise PrealignError("give exactly one of --prompt TEXT or --prompts FILE.jsonl")
        config = GenerateConfig(policy=policy, exit_threshold=_threshold(exit_threshold, no_exit), lock=not no_lock,
                                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                num_beams=num_beams, batch_size=batch_size, seed=seed, guard=guard,
                                guard_threshold=guard_threshold)
        if prompt is not None:
            m, tok = load_for_generation(model)
            res = generate_texts(m, tok, [prompt], config)[0]
            if as_json:
                typer.echo(json.dumps(res.to_dict(), ensure_ascii=False, indent=2))
            else:
                from rich.console import Console

                from prealign.chat import render
                from prealign.generate import resolve_scheme

                Console().print(render(res, resolve_scheme(tok, None)))
            return
        if out is None:
            raise PrealignError("--prompts needs --out FILE.jsonl (results are appended there and resumed)")
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("generating", total=None)
            n = generate_file(model, prompts, out, config,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
        typer.echo(f"wrote {n} new replies to {out}")

    @app.command("chat")
    def chat_cmd(
        model: Path = typer.Option(..., "--model", help="model directory"),
        policy: str = typer.Option("stop", "--policy", help=POLICY_HELP),
        exit_threshold: float = typer.Option(0.5, "--exit-threshold", help=THRESHOLD_HELP),
        no_exit: bool = typer.Option(False, "--no-exit", help="mask only"),
        max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
        temperature: float = typer.Option(0.8, "--temperature", help="0: greedy"),
        guard: str = typer.Option("auto", "--guard", help=GUARD_HELP),
    ) -> None:
        """Chat with a locked model in the terminal (/help for commands)."""
        from rich.console import Console

        from prealign.chat import ChatSession, run_repl
        from prealign.generate import POLICIES, load_for_generation

        if policy not in POLICIES:
            raise PrealignError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        try:  # line editing and ↑ history at the prompt, where the platform has it
            import readline  # noqa: F401
        except ImportError:
            pass
        m, tok = load_for_generation(model)
        session = ChatSession(m, tok, policy=policy, exit_threshold=_threshold(exit_threshold, no_exit),
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              guard={"on": True, "off": False}.get(guard, guard))
        console = Console(highlight=False)
        run_repl(session, read=console.input, write=console.print)

    @app.command("serve")
    def serve_cmd(
        model: Path = typer.Option(..., "--model", help="model directory"),
        host: str = typer.Option("127.0.0.1", "--host"),
        port: int = typer.Option(8000, "--port"),
        model_name: str = typer.Option("prealign", "--model-name", help="the id clients ask for"),
        policy: str = typer.Option("stop", "--policy", help=POLICY_HELP),
        exit_threshold: float = typer.Option(0.5, "--exit-threshold", help=THRESHOLD_HELP),
        no_exit: bool = typer.Option(False, "--no-exit", help="mask only"),
        max_batch: int = typer.Option(16, "--max-batch", help="rows generated together"),
        max_queue: int = typer.Option(256, "--max-queue", help="queued rows before answering 503"),
        timeout: float = typer.Option(120.0, "--timeout", help="seconds before a request answers 504"),
        max_tokens_limit: int = typer.Option(1024, "--max-tokens-limit", help="largest max_tokens a request may ask"),
        guard: str = typer.Option("auto", "--guard", help=GUARD_HELP),
        guard_threshold: Optional[float] = typer.Option(None, "--guard-threshold", help="override the probe's P(human) threshold"),
    ) -> None:
        """OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models), always locked."""
        from prealign.serve import ServeConfig, serve

        config = ServeConfig(model_name=model_name, policy=policy, exit_threshold=_threshold(exit_threshold, no_exit),
                             max_batch=max_batch, max_queue=max_queue, request_timeout_s=timeout,
                             max_tokens_limit=max_tokens_limit, guard=guard, guard_threshold=guard_threshold)
        serve(model, host=host, port=port, config=config)
