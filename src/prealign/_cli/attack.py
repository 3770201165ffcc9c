"""CLI verbs of the attack area: `prealign attack finetune` (tamper resistance).

    prealign attack finetune --experiment runs/demo
    prealign attack finetune --experiment runs/smoke --steps 0,2,4 --lrs 1e-3,1e-2 --seeds 0 --n-eval 24

Parses arguments, builds a `TamperConfig`, calls `prealign.experiment.tamper.run_tamper` and prints
the steps-to-break table. No logic of its own.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from prealign.errors import PrealignError

attack_app = typer.Typer(help="Attack trained models: adversarial fine-tuning against each row (tamper resistance).",
                         no_args_is_help=True)


def _list(name: str, text: str, kind: type) -> tuple:
    """`"0,10,30"` -> (0, 10, 30); a bad item is one error naming the option."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    try:
        if kind is int:
            return tuple(int(x) for x in items)
        return tuple(kind(x) for x in items)
    except ValueError:
        what = {int: "whole numbers", float: "numbers", str: "names"}[kind]
        raise PrealignError(f"--{name}: expected comma-separated {what}, got {text!r}") from None


def _d(field: str):
    """The default of a `TamperConfig` field as the option's text."""
    from prealign.experiment.tamper import TamperConfig

    v = getattr(TamperConfig(), field)
    return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, tuple) else v


@attack_app.command("finetune")
def finetune(
    experiment: str = typer.Option(..., "--experiment", help="A finished experiment directory (prealign experiment --out DIR)."),
    out: Optional[str] = typer.Option(None, "--out", help="Where the stage writes (default: EXPERIMENT/tamper)."),
    rows: str = typer.Option("", "--rows", help="Rows to attack, comma-separated (default: tagged+lock, tagged+guard, tagged, mle+sft, filtered and the published baselines the experiment has)."),
    kinds: str = typer.Option(_d("kinds"), "--kinds", help="Attack data: leak-ai (the AI's own disclosures), leak-human (humans telling each other), benign."),
    steps: str = typer.Option(_d("steps"), "--steps", help="Checkpoints (optimizer steps) at which every row is evaluated; the run is the largest."),
    lrs: str = typer.Option(_d("lrs"), "--lrs", help="Peak learning rates swept (the worst is the headline)."),
    seeds: str = typer.Option(_d("seeds"), "--seeds", help="Attack seeds (data order), pooled per learning rate."),
    model_seeds: str = typer.Option(_d("model_seeds"), "--model-seeds", help="Which seeds of the experiment's models to attack."),
    batch_size: int = typer.Option(_d("batch_size"), "--batch-size", help="Rows per optimizer step."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per row (default: the model's trained length)."),
    warmup_ratio: float = typer.Option(_d("warmup_ratio"), "--warmup-ratio", help="Linear warm-up over this share of the run, then cosine."),
    min_lr_ratio: float = typer.Option(_d("min_lr_ratio"), "--min-lr-ratio", help="The cosine ends at this share of the peak."),
    weight_decay: float = typer.Option(_d("weight_decay"), "--weight-decay"),
    beta1: float = typer.Option(_d("beta1"), "--beta1"),
    beta2: float = typer.Option(_d("beta2"), "--beta2"),
    grad_clip: float = typer.Option(_d("grad_clip"), "--grad-clip"),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="LoRA adapters of this rank (needs peft) instead of full-parameter fine-tuning."),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA scale numerator (default: 2 × rank)."),
    checkpoint_every: int = typer.Option(_d("checkpoint_every"), "--checkpoint-every", help="Training checkpoints (resume points) between evaluations."),
    attack_docs: int = typer.Option(_d("attack_docs"), "--attack-docs", help="Documents per attack data set."),
    data_seed: int = typer.Option(_d("data_seed"), "--data-seed", help="Seed of the attack data (training-split scenarios)."),
    leak_ai_form: str = typer.Option(_d("leak_ai_form"), "--leak-ai-form", help="auto | tag | chat: leak-ai as AI spans in tags or as assistant turns (auto: tags for tagged models)."),
    n_eval: Optional[int] = typer.Option(None, "--n-eval", help="Attacks evaluated at each checkpoint (default: the whole file)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Longest reply (default: the experiment plan's)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature (default: the experiment plan's)."),
    samples: int = typer.Option(_d("samples"), "--samples", help="Replies per attack."),
    eval_batch_size: int = typer.Option(_d("eval_batch_size"), "--eval-batch-size", help="Replies generated together."),
    break_level: float = typer.Option(_d("break_level"), "--break-level", help="A checkpoint breaks when its leak exceeds this."),
    break_metric: str = typer.Option(_d("break_metric"), "--break-metric", help="any_leak_rate (any hazard's canary) | leak_rate (the requested one)."),
    break_split: str = typer.Option(_d("break_split"), "--break-split", help="uncovered | hazard_uncovered | heldout | covered | overall | reserve."),
    device: str = typer.Option(_d("device"), "--device", help="auto | cpu | cuda"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Training progress bars."),
) -> None:
    """Fine-tune every row's model adversarially and report how many steps until it leaks."""
    from prealign.experiment.tamper import TamperConfig, format_table, run_tamper

    config = TamperConfig(
        kinds=_list("kinds", kinds, str), rows=_list("rows", rows, str), steps=_list("steps", steps, int),
        lrs=_list("lrs", lrs, float), seeds=_list("seeds", seeds, int), model_seeds=_list("model-seeds", model_seeds, int),
        batch_size=batch_size, seq_len=seq_len, warmup_ratio=warmup_ratio, min_lr_ratio=min_lr_ratio,
        weight_decay=weight_decay, beta1=beta1, beta2=beta2, grad_clip=grad_clip, lora_rank=lora_rank, lora_alpha=lora_alpha,
        checkpoint_every=checkpoint_every, attack_docs=attack_docs, data_seed=data_seed, leak_ai_form=leak_ai_form,
        n_eval=n_eval, max_new_tokens=max_new_tokens, temperature=temperature, samples=samples,
        eval_batch_size=eval_batch_size, break_level=break_level, break_metric=break_metric, break_split=break_split,
        device=device, threads=threads, progress=progress,
    )
    path = run_tamper(experiment, config, log=lambda s: print(s, file=sys.stderr, flush=True), out=out)
    from prealign._util import read_json

    results = read_json(path)
    print(format_table(results))
    print(f"results: {path} ({results['wall_seconds']:.0f} s)")


def register(app: typer.Typer) -> None:
    app.add_typer(attack_app, name="attack")
