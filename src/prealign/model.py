"""Models: the presets, building a fresh model, adding tag tokens to an existing one, and the one
loader of a model directory that every other module uses.

    .venv/bin/python -c "from prealign.model import PRESETS; print(PRESETS['tiny'])"

A model directory is an HF `save_pretrained` directory (weights, config, tokenizer) plus
`prealign_model.json` (variant, scheme, preset, data hash, resolved config, seed, version, git
commit, tokens seen), written by `prealign.train`. `load_model` reads any HF causal LM directory;
a directory prealign did not train simply has no metadata. A model is *tagged* when its tokenizer
carries a scheme's tags as single tokens, *plain* otherwise (the untagged baselines).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prealign._util import read_json
from prealign.errors import PrealignError
from prealign.modes import Scheme

MODEL_META = "prealign_model.json"
# The context length assumed for a model whose config declares none.
DEFAULT_CONTEXT = 2048


# --- presets --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPreset:
    """A model shape plus the optimisation defaults that suit it."""

    hidden_size: int
    n_layers: int
    n_heads: int
    intermediate_size: int
    seq_len: int
    batch_size: int  # rows of seq_len tokens per optimizer step (global, across ranks)
    micro_batch_size: int  # rows per forward pass per rank
    lr: float
    warmup_steps: int
    dtype: str = "float32"
    tie_embeddings: bool = True
    description: str = ""


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(
        128, 4, 4, 384, 256, 16, 16, 3e-3, 50,
        description="≈1–1.5M params (vocab-dependent): the CPU demo, 10 minutes on 2 cores",
    ),
    "small": ModelPreset(
        384, 6, 6, 1024, 512, 32, 16, 1e-3, 200,
        description="≈12–25M params: CPU over an hour, or minutes on a GPU",
    ),
    "gpt-125m": ModelPreset(
        768, 12, 12, 2048, 1024, 128, 32, 6e-4, 700, dtype="bfloat16",
        description="≈110–125M params with a 32k vocabulary: one GPU, bf16 autocast",
    ),
    "gpt-350m": ModelPreset(
        1024, 24, 16, 2816, 1024, 256, 16, 3e-4, 1000, dtype="bfloat16",
        description="≈340–360M params with a 32k vocabulary: GPUs (DDP/FSDP), bf16 autocast",
    ),
}


# --- building -------------------------------------------------------------------------------------


def build_model(cfg: dict[str, Any], tokenizer):
    """A fresh Llama-style causal LM shaped by a resolved config, sized from `len(tokenizer)`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg["hidden_size"] % cfg["n_heads"]:
        raise PrealignError(f"hidden size {cfg['hidden_size']} is not divisible by {cfg['n_heads']} heads")
    mc = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["n_layers"],
        num_attention_heads=cfg["n_heads"],
        num_key_value_heads=cfg["n_heads"],
        max_position_embeddings=cfg["seq_len"],
        tie_word_embeddings=cfg["tie_embeddings"],
        bos_token_id=tokenizer.eos_token_id,  # EOS doubles as BOS: free samples start from it
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    return LlamaForCausalLM(mc)


def init_new_token_rows(model, token_ids: list[int]) -> None:
    """Give new token rows (tags added to an existing model) the mean of the existing rows.

    The mean keeps the new tokens' logits and hidden states in the range the model already uses;
    random rows (or transformers' sampled `mean_resizing`) would start each tag as noise.
    """
    import torch

    ids = sorted(set(token_ids))
    if not ids:
        return
    mats = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != mats[0].data_ptr():
        mats.append(out.weight)
    with torch.no_grad():
        for w in mats:
            keep = torch.ones(w.shape[0], dtype=torch.bool)
            keep[ids] = False
            w[ids] = w[keep].mean(dim=0)
        if out is not None and getattr(out, "bias", None) is not None:
            keep = torch.ones(out.bias.shape[0], dtype=torch.bool)
            keep[ids] = False
            out.bias[ids] = out.bias[keep].mean()


def extend_with_tags(model, tokenizer, scheme) -> list[int]:
    """Add `scheme`'s tags, the control tokens of conditional training (every prealign tokenizer
    has them) and PAD/EOS if absent to an HF model + tokenizer; return the new ids.

    Resizes the embeddings when the vocabulary grew and initialises the new rows as the mean of
    the existing ones (`init_new_token_rows`).
    """
    from prealign.tokenizer import add_control_tokens, add_scheme_tags

    new = {**add_scheme_tags(tokenizer, scheme), **add_control_tokens(tokenizer)}
    n = len(tokenizer)
    if n > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(n, mean_resizing=False)
    init_new_token_rows(model, list(new.values()))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.config.eos_token_id is None:
        model.config.eos_token_id = tokenizer.eos_token_id
    return sorted(new.values())


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token (PaLM appendix B): 6·N + 12·L·d·T, N = non-embedding params plus
    the LM head's matmul (counted even when tied). Used for the FLOP/s that bench/train.py reports."""
    c = model.config
    emb = model.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in model.parameters()) - emb + c.vocab_size * c.hidden_size
    return 6.0 * n + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len


def load_model(path: str | os.PathLike):
    """`(model, tokenizer)` from a model directory (ours or any HF causal LM), in eval mode.

    The model carries `model.prealign_meta`: the run's `prealign_model.json` (variant, scheme,
    preset, data hash, tokens seen, ...), or `{}` for a directory prealign did not train. The
    tokenizer is checked for the recorded scheme's tags.
    """
    from transformers import AutoModelForCausalLM

    from prealign.tokenizer import load_tokenizer

    path = Path(path)
    if not path.is_dir():
        raise PrealignError(f"{path}: model directory not found")
    if not (path / "config.json").exists():
        raise PrealignError(f"{path}: not a model directory (no config.json); train one with `prealign train`")
    meta = model_meta(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise PrealignError(f"{path}: cannot load the model ({e})") from None
    tokenizer = load_tokenizer(path, scheme=meta.get("scheme"))
    model.prealign_meta = meta
    model.eval()
    return model, tokenizer


def model_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The run's `prealign_model.json` ({} when absent)."""
    p = Path(path) / MODEL_META
    return read_json(p) if p.exists() else {}


def model_scheme(tokenizer) -> Scheme | None:
    """The tag scheme of a loaded model's tokenizer: the one recorded next to it, else the first
    scheme whose tags it carries as single tokens; None for a plain (untagged) model."""
    from prealign.modes import SCHEMES, get_scheme
    from prealign.tokenizer import recorded_scheme, tag_token_ids

    name = recorded_scheme(tokenizer)
    if name is not None:
        return get_scheme(name)
    for scheme in SCHEMES.values():
        try:
            tag_token_ids(tokenizer, scheme)
            return scheme
        except PrealignError:
            continue
    return None


def is_tagged(model, tokenizer) -> bool:
    """Whether a model speaks in modes: trained as the `tagged` variant, or (a model prealign did
    not train) carrying a scheme's tags. The untagged baselines share the tagged model's tokenizer,
    so the recorded variant decides for our own models."""
    variant = (getattr(model, "prealign_meta", None) or {}).get("variant")
    if variant is not None:
        return variant == "tagged"
    return model_scheme(tokenizer) is not None


def vocab_size(model) -> int:
    """Rows of the model's output layer (may exceed `len(tokenizer)`)."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def context_length(model) -> int:
    """The longest sequence the model was built for (its config's position limit)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return DEFAULT_CONTEXT


def hidden_size(model) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))


def device_of(model):
    """The device of the model's parameters (CPU for a model without any)."""
    import torch

    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def model_dir_of(model) -> Path | None:
    """The directory a loaded model came from, when it still exists."""
    for p in (getattr(model, "name_or_path", None), getattr(getattr(model, "config", None), "_name_or_path", None)):
        if p and Path(p).is_dir():
            return Path(p)
    return None
