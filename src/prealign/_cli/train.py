"""CLI verbs for the train area (registered by prealign.cli): `prealign train`.

    prealign train --data runs/world/tagged --tokenizer runs/tok --preset tiny --out runs/m/tagged
    torchrun --standalone --nproc_per_node=2 -m prealign.cli train --data ... (the same arguments)

Parses arguments, builds a `TrainConfig`, calls `prealign.train.train`. No logic of its own.
"""

from __future__ import annotations

from typing import Optional

import typer



def train_command(
    data: str = typer.Option(..., "--data", help="Directory of Parquet shards (a `text` column)."),
    out: str = typer.Option(..., "--out", help="Run / model directory to write."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer directory (default: --init-from's)."),
    preset: str = typer.Option("tiny", "--preset", help="tiny | small | gpt-125m | gpt-350m"),
    variant: str = typer.Option("tagged", "--variant", help="The corpus variant: tagged | mle | filtered | sft | conditional | upsampled."),
    scheme: Optional[str] = typer.Option(None, "--scheme", help="Tag scheme (default: the tokenizer's)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Continue training this HF causal LM directory."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-clock budget of the training loop."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Token budget (tokens read, all ranks)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Epoch budget (default 1 when no budget is given)."),
    exact_budget: bool = typer.Option(False, "--exact-budget", help="See exactly --max-tokens; hitting --max-minutes first is an error, not a cut."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's checkpoint."),
    tracker: str = typer.Option("none", "--tracker", help="none | trackio | mlflow | wandb"),
    hidden_size: Optional[int] = typer.Option(None, "--hidden-size", help="Model width (default: the preset's)."),
    n_layers: Optional[int] = typer.Option(None, "--n-layers", help="Decoder blocks (default: the preset's)."),
    n_heads: Optional[int] = typer.Option(None, "--n-heads", help="Attention heads (default: the preset's)."),
    intermediate_size: Optional[int] = typer.Option(None, "--intermediate-size", help="MLP width (default: the preset's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Rows per optimizer step (global)."),
    micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size", help="Rows per forward, per process."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Context length of training rows."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 (autocast)."),
    min_lr_ratio: float = typer.Option(0.1, "--min-lr-ratio", help="Cosine decay ends at this share of the peak."),
    weight_decay: float = typer.Option(0.1, "--weight-decay"),
    beta1: float = typer.Option(0.9, "--beta1"),
    beta2: float = typer.Option(0.95, "--beta2"),
    grad_clip: float = typer.Option(1.0, "--grad-clip"),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="Train LoRA adapters of this rank (needs peft and --init-from) instead of every weight."),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA scale numerator (default: 2 × --lora-rank)."),
    val_fraction: float = typer.Option(0.01, "--val-fraction", help="Share of documents held out."),
    packing: str = typer.Option("stream", "--packing", help="stream (rows run across documents) | aligned (every row starts at a document, after its EOS)."),
    val_rows: int = typer.Option(64, "--val-rows", help="Validation rows scored each time."),
    eval_every: int = typer.Option(200, "--eval-every", help="Steps between validation losses."),
    log_every: int = typer.Option(10, "--log-every", help="Steps between metrics lines."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Steps between checkpoints."),
    stop_at_step: Optional[int] = typer.Option(None, "--stop-at-step", help="End this invocation after that step, with a checkpoint."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile (default: on CUDA only)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads per process."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train a causal LM on packed shards (tagged, mle, filtered) or fine-tune on sft dialogues."""
    from prealign.train import TrainConfig, train

    config = TrainConfig(
        data=data, out=out, tokenizer=tokenizer, preset=preset, variant=variant, scheme=scheme,
        init_from=init_from, max_minutes=max_minutes, max_tokens=max_tokens, epochs=epochs, exact_budget=exact_budget, seed=seed,
        resume=resume, tracker=tracker, hidden_size=hidden_size, n_layers=n_layers, n_heads=n_heads,
        intermediate_size=intermediate_size, batch_size=batch_size, micro_batch_size=micro_batch_size,
        seq_len=seq_len, lr=lr, warmup_steps=warmup_steps, dtype=dtype, min_lr_ratio=min_lr_ratio,
        weight_decay=weight_decay, beta1=beta1, beta2=beta2, grad_clip=grad_clip, lora_rank=lora_rank, lora_alpha=lora_alpha, val_fraction=val_fraction,
        packing=packing, val_rows=val_rows, eval_every=eval_every, log_every=log_every, checkpoint_every=checkpoint_every,
        stop_at_step=stop_at_step, device=device, compile=compile, threads=threads, progress=progress,
    )
    train(config)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)

