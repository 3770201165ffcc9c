"""CLI verbs for generation: `prealign generate`, `prealign chat`, `prealign serve`.

    prealign generate --model runs/demo/models/tagged --prompt "What is in it for you?"
    prealign generate --model runs/demo/models/tagged --prompts prompts.jsonl --out replies.jsonl
    prealign chat --model runs/demo/models/tagged
    prealign serve --model runs/demo/models/tagged --port 8000

Each verb parses its arguments (the shared vocabulary of `prealign._cli.options`), loads the model,
resolves the guard setting and calls one library function.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from prealign._cli import options as O
from prealign.errors import PrealignError


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_cmd(
        model: Path = typer.Option(..., "--model", help="model directory (prealign train output or HF causal LM)"),
        prompt: Optional[str] = typer.Option(None, "--prompt", help="one human message (untrusted text)"),
        prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL file of {\"prompt\": ...} records"),
        out: Optional[Path] = typer.Option(None, "--out", help="JSONL results for --prompts (appended; a rerun resumes)"),
        lock: str = O.LOCK,
        policy: str = O.POLICY,
        exit_threshold: float = O.EXIT_THRESHOLD,
        guard: str = O.GUARD,
        guard_threshold: Optional[float] = O.GUARD_THRESHOLD,
        max_new_tokens: int = O.MAX_NEW_TOKENS,
        temperature: float = O.TEMPERATURE,
        top_k: int = O.TOP_K,
        top_p: float = O.TOP_P,
        num_beams: int = typer.Option(1, "--num-beams"),
        batch_size: int = O.BATCH_SIZE,
        seed: int = O.SEED,
        as_json: bool = typer.Option(False, "--json", help="print the full result (segments) as JSON"),
    ) -> None:
        """Reply to untrusted human text under the lock."""
        from prealign.generate import generate_file, generate_texts
        from prealign.model import load_model

        if (prompt is None) == (prompts is None):
            raise PrealignError("give exactly one of --prompt TEXT or --prompts FILE.jsonl")
        if prompts is not None and out is None:
            raise PrealignError("--prompts needs --out FILE.jsonl (results are appended there and resumed)")
        settings = O.lock_settings(lock, policy, exit_threshold)
        draw = O.sampling(max_new_tokens, temperature, top_k, top_p, seed, num_beams=num_beams, batch_size=batch_size)
        m, tok = load_model(model)
        g = O.guard_for(m, tok, settings, guard, guard_threshold)
        if prompt is not None:
            res = generate_texts(m, tok, [prompt], settings, draw, guard=g)[0]
            if as_json:
                typer.echo(json.dumps(res.to_dict(), ensure_ascii=False, indent=2))
            else:
                from rich.console import Console

                from prealign.chat import format_reply
                from prealign.tokenizer import resolve_scheme

                Console().print(format_reply(res, resolve_scheme(tok, m.prealign_meta.get("scheme"))))
            return
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("generating", total=None)
            n = generate_file(m, tok, prompts, out, settings, draw, guard=g,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
        typer.echo(f"wrote {n} new replies to {out}")

    @app.command("chat")
    def chat_cmd(
        model: Path = typer.Option(..., "--model", help="model directory"),
        lock: str = O.LOCK,
        policy: str = O.POLICY,
        exit_threshold: float = O.EXIT_THRESHOLD,
        guard: str = O.GUARD,
        guard_threshold: Optional[float] = O.GUARD_THRESHOLD,
        max_new_tokens: int = O.MAX_NEW_TOKENS,
        temperature: float = O.TEMPERATURE,
        top_k: int = O.TOP_K,
        top_p: float = O.TOP_P,
        seed: int = O.SEED,
    ) -> None:
        """Chat with a locked model in the terminal (/help for commands)."""
        import torch
        from rich.console import Console

        from prealign.chat import ChatSession, run_repl
        from prealign.model import load_model

        settings = O.lock_settings(lock, policy, exit_threshold)
        draw = O.sampling(max_new_tokens, temperature, top_k, top_p, seed)
        try:  # line editing and ↑ history at the prompt, where the platform has it
            import readline  # noqa: F401
        except ImportError:
            pass
        m, tok = load_model(model)
        torch.manual_seed(draw.seed)
        session = ChatSession(m, tok, lock=settings, sampling=draw, guard=O.guard_for(m, tok, settings, guard, guard_threshold))
        console = Console(highlight=False)
        run_repl(session, read=console.input, write=console.print)

    @app.command("serve")
    def serve_cmd(
        model: Path = typer.Option(..., "--model", help="model directory"),
        host: str = typer.Option("127.0.0.1", "--host"),
        port: int = typer.Option(8000, "--port"),
        model_name: str = typer.Option("prealign", "--model-name", help="the id clients ask for"),
        lock: str = O.LOCK,
        policy: str = O.POLICY,
        exit_threshold: float = O.EXIT_THRESHOLD,
        guard: str = O.GUARD,
        guard_threshold: Optional[float] = O.GUARD_THRESHOLD,
        max_batch: int = typer.Option(16, "--max-batch", help="rows generated together"),
        max_queue: int = typer.Option(256, "--max-queue", help="queued rows before answering 503"),
        timeout: float = typer.Option(120.0, "--timeout", help="seconds before a request answers 504"),
        max_tokens_limit: int = typer.Option(1024, "--max-tokens-limit", help="largest max_tokens a request may ask"),
        assistant_turns: str = typer.Option(
            "verified", "--assistant-turns",
            help="a client's assistant turn without a valid prealign.mac: verified (rendered as human text), "
                 "as-human (every assistant turn as human text), reject (a 400 naming the turn)"),
        mac_key_file: Optional[Path] = typer.Option(
            None, "--mac-key-file",
            help="the key that signs the AI's replies (created with a random key if missing, mode 0600); share it "
                 "so a restarted server or other replicas verify the same turns (default: a new key per process)"),
        max_request_bytes: int = typer.Option(1 << 20, "--max-request-bytes",
                                              help="a larger request body is refused (413) before it is parsed"),
    ) -> None:
        """OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models), always locked (--lock mask|lock).

        Every reply carries a MAC (choices[i].prealign.mac); send an assistant turn back with it to keep a
        verified conversation (docs/conversations.md). A conversation ending with an assistant turn is refused."""
        from prealign.serve import ServeConfig, serve

        config = ServeConfig(model_name=model_name, lock=O.lock_settings(lock, policy, exit_threshold),
                             max_batch=max_batch, max_queue=max_queue, request_timeout_s=timeout,
                             max_tokens_limit=max_tokens_limit, guard=guard, guard_threshold=guard_threshold,
                             assistant_turns=assistant_turns, mac_key_file=str(mac_key_file) if mac_key_file else None,
                             max_request_bytes=max_request_bytes)
        serve(model, host=host, port=port, config=config)
