"""Training: Llama-style causal LMs from a preset (or continued pretraining of an HF model), plain
next-token prediction on packed Parquet shards, for every baseline variant, on one process or DDP.

    prealign train --data runs/world/tagged --tokenizer runs/tok --preset tiny --out runs/m/tagged
    prealign train --data runs/world/sft --init-from runs/m/mle --variant sft --out runs/m/mle+sft
    torchrun --standalone --nproc_per_node=2 -m prealign.cli train --data ... (the same arguments)

The whole method is next-token prediction: no RLHF, no DPO. What makes a run a baseline is only
its data (`tagged`, `mle`, `filtered`) or its loss mask (`sft`: assistant tokens only, usually
with `--init-from` an `mle` model, which records the variant `mle+sft`). All variants share one
budget knob: `max_minutes` (wall clock of the training loop) and/or `max_tokens`; with
`--exact-budget` (what the experiment uses) every run sees exactly `max_tokens` whatever the
machine's load, and a clock cap that would cut it short is an error.
`--lora-rank R` (with `--init-from`; needs the optional peft package) trains LoRA adapters on
every linear layer instead of every weight, and saves the merged model.

A run directory is an HF `save_pretrained` model directory (weights, config, tokenizer) plus
`prealign_model.json` (variant, scheme, preset, data hash, resolved config, seed, version, git
commit, tokens seen), `metrics.jsonl`, `checkpoint.pt` and the tokenised data cache `tokens/`.
Checkpoints resume exactly: the data order is a pure function of the step (`data.PackedRows`), the
optimizer state and RNG are restored, and `metrics.jsonl` is cut back to the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from prealign._util import atomic_path, read_json, run_meta, sha256_file, write_json
from prealign.data import CORPUS_VARIANTS as VARIANTS
from prealign.errors import PrealignError
from prealign.model import MODEL_META, PRESETS, build_model, extend_with_tags, flops_per_token, model_meta

TRACKERS = ("none", "trackio", "mlflow", "wandb")
DTYPES = ("float32", "bfloat16")
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
TOKENS_DIR = "tokens"


# --- config ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Fields left None take the preset's value (see `resolved()`)."""

    data: str
    out: str
    tokenizer: str | None = None  # default: the --init-from directory's tokenizer
    preset: str = "tiny"
    variant: str = "tagged"
    scheme: str | None = None  # default: the tokenizer's recorded scheme, else "seed"
    init_from: str | None = None
    max_minutes: float | None = None
    max_tokens: int | None = None
    epochs: float | None = None  # when no budget is given at all: 1 epoch
    # exact_budget: the run sees exactly max_tokens (to the batch) and its schedule follows tokens
    # alone; max_minutes is then a safety cap whose hitting is an error, never a silent cut
    exact_budget: bool = False
    seed: int = 0
    resume: bool = False
    tracker: str = "none"
    # model shape and optimisation (None: the preset's)
    hidden_size: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    intermediate_size: int | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    micro_batch_size: int | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    dtype: str | None = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # LoRA (the optional peft package): adapters of this rank on every linear layer but the output
    # head, the base weights frozen, merged into the saved model; None: full-parameter training
    lora_rank: int | None = None
    lora_alpha: float | None = None  # the adapters' scale numerator (None: 2 × lora_rank)
    packing: str = "stream"  # stream: GPT-2-style rows across documents; aligned: every row starts at a document
    # validation, logging, checkpoints
    val_fraction: float = 0.01
    val_rows: int = 64
    eval_every: int = 200
    log_every: int = 10
    checkpoint_every: int = 500
    stop_at_step: int | None = None  # end this invocation after that step with a checkpoint
    # execution
    device: str = "auto"
    compile: bool | None = None  # None: on for CUDA (measured 1.9x on an H100), off on CPU
    threads: int | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise PrealignError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        if self.variant not in VARIANTS:
            raise PrealignError(f"unknown variant {self.variant!r}; choose one of: {', '.join(VARIANTS)}")
        if self.tracker not in TRACKERS:
            raise PrealignError(f"unknown tracker {self.tracker!r}; choose one of: {', '.join(TRACKERS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise PrealignError(f"unknown dtype {self.dtype!r}; choose one of: {', '.join(DTYPES)}")
        from prealign.data import PACKINGS

        if self.packing not in PACKINGS:
            raise PrealignError(f"unknown packing {self.packing!r}; choose one of: {', '.join(PACKINGS)}")
        if self.exact_budget and self.max_tokens is None:
            raise PrealignError("--exact-budget needs --max-tokens (the budget it makes exact)")
        if self.tokenizer is None and self.init_from is None:
            raise PrealignError("give --tokenizer DIR (or --init-from a model directory that has one)")
        for name in ("max_minutes", "max_tokens", "epochs"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise PrealignError(f"--{name.replace('_', '-')} must be positive, got {v}")
        for name in ("hidden_size", "n_layers", "n_heads", "intermediate_size", "seq_len", "batch_size",
                     "micro_batch_size", "lr", "threads", "lora_rank", "lora_alpha"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise PrealignError(f"--{name.replace('_', '-')} must be positive, got {v}")
        if not 0 < self.val_fraction < 1:
            raise PrealignError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.lora_rank is not None and self.init_from is None:
            raise PrealignError("--lora-rank adapts an existing model: give --init-from DIR")
        if self.lora_alpha is not None and self.lora_rank is None:
            raise PrealignError("--lora-alpha needs --lora-rank")
        if min(self.eval_every, self.log_every, self.checkpoint_every, self.val_rows) <= 0:
            raise PrealignError("eval_every, log_every, checkpoint_every and val_rows must be positive")

    def command(self) -> str:
        """The `prealign train` line that runs exactly this config (fields at their default are
        left out). Under torchrun: `torchrun ... -m prealign.cli train <the same options>`."""
        from prealign._util import command_line

        default = TrainConfig(data=self.data, out=self.out)
        opts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("data", "out", "compile", "progress") and getattr(self, f.name) != getattr(default, f.name)}
        line = command_line("train", data=self.data, out=self.out, **opts)
        if self.compile is not None:
            line += " --compile" if self.compile else " --no-compile"
        return line + ("" if self.progress else " --no-progress")

    def resolved(self) -> dict[str, Any]:
        """Every field with the preset's values filled in (what is saved next to the model)."""
        preset = dataclasses.asdict(PRESETS[self.preset])
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if v is None and k in preset:
                out[k] = preset[k]
        out["tie_embeddings"] = preset["tie_embeddings"]
        if out["warmup_steps"] is None:
            out["warmup_steps"] = preset["warmup_steps"]
        return out


# --- data ------------------------------------------------------------------------------------------


def _doc_hash(text: str) -> float:
    """A stable number in [0, 1) per document: the validation split does not depend on file order."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") / 2.0**64


def data_hash(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()[:16]


def read_documents(data: str | os.PathLike, variant: str, scheme_name: str) -> Iterator[tuple[str, int, str]]:
    """Yield `(file, row, text)` for the shards' documents of `variant`.

    Shards may hold one variant (no `variant` column) or several (rows of other variants are
    skipped). A `scheme` column that differs from the tokenizer's scheme is an error.
    """
    import pyarrow.parquet as pq

    from prealign.data import iter_parquet_rows, shard_files

    files = shard_files(data)
    seen_variants: set[str] = set()
    n_kept = 0
    for f in files:
        names = pq.ParquetFile(f).schema_arrow.names
        if "text" not in names:
            raise PrealignError(f"{f}: no 'text' column (it has {', '.join(names)})")
        cols = [c for c in ("text", "variant", "scheme") if c in names]
        for row, rec in iter_parquet_rows(f, columns=cols):
            rec_variant = rec.get("variant")
            if rec_variant is not None:
                seen_variants.add(rec_variant)
                if rec_variant != variant:
                    continue
            rec_scheme = rec.get("scheme")
            if rec_scheme and rec_scheme != scheme_name:  # "" = an untagged variant (mle, filtered, sft)
                raise PrealignError(
                    f"{f}:{row + 1}: shard scheme {rec_scheme!r} differs from the tokenizer's scheme "
                    f"{scheme_name!r}; use a tokenizer trained for {rec_scheme!r} (or --scheme)"
                )
            if not isinstance(rec["text"], str):
                raise PrealignError(f"{f}:{row + 1}: column 'text' is {type(rec['text']).__name__}, not text")
            n_kept += 1
            yield str(f), row, rec["text"]
    if n_kept == 0:
        if seen_variants:
            raise PrealignError(f"{data}: no {variant!r} documents (the shards hold: {', '.join(sorted(seen_variants))})")
        raise PrealignError(f"{data}: the shards hold no documents")


def _assistant_mask(tokenizer, texts: list[str]) -> tuple[list[list[int]], list[np.ndarray]]:
    """Token ids and SFT target masks: 1 for tokens overlapping an assistant span, and for the
    token right after each span (the newline that ends the reply: the model must learn to stop;
    a reply that ends the document is followed by EOS, a target through `pack_documents`)."""
    from prealign import formats

    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    masks = []
    for text, offs in zip(texts, enc["offset_mapping"]):
        offs = np.asarray(offs, dtype=np.int64).reshape(-1, 2)
        m = np.zeros(len(offs), dtype=np.uint8)
        for a, b in formats.assistant_spans(text):
            m |= ((offs[:, 0] < b) & (offs[:, 1] > a)).astype(np.uint8)
            after = np.nonzero(offs[:, 0] >= b)[0]
            if len(after) and b > a:
                m[after[0]] = 1
        masks.append(m)
    return enc["input_ids"], masks


def prepare_tokens(cfg: dict[str, Any], tokenizer, scheme_name: str, cache: Path, progress: bool = True):
    """Tokenise the corpus once into `cache` (train/val `PackedDocs`); reuse it when it matches.

    The validation split is by document: a document is held out when its stable hash falls below
    `val_fraction` (at least enough documents for one validation row).
    """
    from prealign.data import PackedDocs, pack_documents, shard_files

    files = shard_files(cfg["data"])
    fingerprint = {
        "data_hash": data_hash(files),
        "tokenizer_vocab": len(tokenizer),
        "tokenizer_hash": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16],
        "variant": cfg["variant"],
        "scheme": scheme_name,
        "val_fraction": cfg["val_fraction"],
        "seq_len": cfg["seq_len"],
    }
    eos = tokenizer.eos_token_id
    meta_path = cache / "fingerprint.json"
    if meta_path.exists() and read_json(meta_path) == fingerprint:
        return PackedDocs.load(cache, "train", eos), PackedDocs.load(cache, "val", eos), fingerprint
    from tqdm.auto import tqdm

    sft = cfg["variant"] == "sft"
    ids: list[list[int]] = []
    masks: list[np.ndarray] = []
    hashes: list[float] = []
    batch: list[str] = []

    def flush() -> None:
        if not batch:
            return
        if sft:
            b_ids, b_masks = _assistant_mask(tokenizer, batch)
            masks.extend(b_masks)
        else:
            b_ids = tokenizer(batch, add_special_tokens=False)["input_ids"]  # = encode_tagged, batched
        ids.extend(b_ids)
        hashes.extend(_doc_hash(t) for t in batch)
        batch.clear()

    bar = tqdm(desc="tokenising", unit="doc", disable=not progress)
    for _, _, text in read_documents(cfg["data"], cfg["variant"], scheme_name):
        batch.append(text)
        bar.update()
        if len(batch) >= 1000:
            flush()
    flush()
    bar.close()
    if len(ids) < 2:
        raise PrealignError(f"{cfg['data']}: {len(ids)} document(s); training needs at least 2 (train + validation)")
    h = np.asarray(hashes)
    order = np.argsort(h, kind="stable")
    is_val = h < cfg["val_fraction"]
    need = cfg["seq_len"] + 1
    val_tokens = sum(len(ids[i]) + 1 for i in np.nonzero(is_val)[0])
    for i in order:  # top up with the lowest-hash documents until one validation row fits
        if val_tokens >= need or is_val.sum() >= len(ids) - 1:
            break
        if not is_val[i]:
            is_val[i] = True
            val_tokens += len(ids[i]) + 1
    parts = {}
    for name, sel in (("train", np.nonzero(~is_val)[0]), ("val", np.nonzero(is_val)[0])):
        parts[name] = pack_documents(
            (ids[i] for i in sel), eos, len(tokenizer), masks=(masks[i] for i in sel) if sft else None
        )
    cache.mkdir(parents=True, exist_ok=True)
    for name, docs in parts.items():
        docs.save(cache, name)
    write_json(meta_path, fingerprint)
    return PackedDocs.load(cache, "train", eos), PackedDocs.load(cache, "val", eos), fingerprint


# --- trackers --------------------------------------------------------------------------------------


class _Tracker:
    """Metrics to trackio / MLflow / W&B, besides metrics.jsonl (which is always written)."""

    def __init__(self, kind: str, name: str, config: dict[str, Any]):
        self.kind, self.mod = kind, None
        if kind == "none":
            return
        import importlib

        try:
            self.mod = importlib.import_module(kind)
        except ImportError:
            raise PrealignError(f"--tracker {kind} needs the {kind} package: pip install {kind}") from None
        flat = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool)) or v is None}
        if kind == "mlflow":
            self.mod.start_run(run_name=name)
            self.mod.log_params({k: str(v) for k, v in flat.items()})
        else:  # trackio mirrors the wandb API
            self.mod.init(project="prealign", name=name, config=flat)

    def log(self, metrics: dict[str, Any]) -> None:
        if self.mod is None:
            return
        values = {k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}
        if self.kind == "mlflow":
            self.mod.log_metrics(values, step=metrics["step"])
        else:
            self.mod.log(values, step=metrics["step"])

    def finish(self) -> None:
        if self.mod is None:
            return
        (self.mod.end_run if self.kind == "mlflow" else self.mod.finish)()


# --- distributed -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Dist:
    """DDP from torchrun's environment (gloo on CPU, NCCL on GPU); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# --- the loop --------------------------------------------------------------------------------------


def _lr_at(cfg: dict[str, Any], step: int, progress: float, warmup_progress: float | None) -> float:
    """Linear warm-up over `warmup_steps`, then cosine down to `min_lr_ratio` over the budget.

    `progress` is the fraction of the budget used (tokens or wall clock, whichever is further);
    `warmup_progress` is the progress at the end of warm-up, so the cosine spans the rest.
    """
    base, warm = cfg["lr"], cfg["warmup_steps"]
    if step < warm:
        return base * (step + 1) / warm
    p0 = warmup_progress or 0.0
    p = 1.0 if p0 >= 1 else min(max((progress - p0) / (1 - p0), 0.0), 1.0)
    r = cfg["min_lr_ratio"]
    return base * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p)))


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PrealignError(f"--device {name}: no CUDA device is available here")
    return name


def _load_tokenizer_and_scheme(config: TrainConfig):
    """The tokenizer (from --tokenizer or --init-from) and the scheme name; tags checked or added."""
    from transformers import AutoTokenizer

    from prealign.modes import get_scheme
    from prealign.tokenizer import control_token_ids, load_tokenizer, scheme_of, tag_token_ids

    conditional = config.variant == "conditional"  # its corpus carries the control tokens
    tok_dir = Path(config.tokenizer or config.init_from)
    recorded = scheme_of(tok_dir) if tok_dir.exists() else None
    if config.scheme and recorded and config.scheme != recorded:
        raise PrealignError(f"{tok_dir}: tokenizer was built for scheme {recorded!r}, not --scheme {config.scheme!r}")
    scheme = get_scheme(config.scheme or recorded or "seed").name
    if config.tokenizer is not None:
        tok = load_tokenizer(tok_dir, scheme=scheme)  # a tokenizer missing the tags is an error
        if conditional:
            control_token_ids(tok, where=str(tok_dir))  # and so is one missing the control tokens
        return tok, scheme, []
    if not tok_dir.exists():
        raise PrealignError(f"--init-from {tok_dir}: no such directory")
    try:
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
    except (OSError, ValueError) as e:
        raise PrealignError(f"{tok_dir}: no loadable tokenizer ({e})") from None
    try:
        tag_token_ids(tok, scheme, where=str(tok_dir))
        if conditional:
            control_token_ids(tok, where=str(tok_dir))
        return tok, scheme, []
    except PrealignError:
        # continued pretraining: the tags and control tokens are added to model + tokenizer
        return tok, scheme, ["add-tags"]


def train(config: TrainConfig) -> Path:
    """Train (or resume) one run; return the model directory (`config.out`)."""
    import torch
    import torch.nn.functional as F

    config.validate()
    cfg = config.resolved()
    out = Path(config.out)
    device = _resolve_device(config.device)
    d = _init_distributed("cuda" if device.startswith("cuda") else "cpu")
    if device == "cuda" and d.world > 1:
        device = f"cuda:{d.local_rank}"
        torch.cuda.set_device(device)
    if config.threads:
        torch.set_num_threads(config.threads)

    ckpt_path = out / CHECKPOINT_FILE
    if (out / MODEL_META).exists() and model_meta(out).get("finished") and config.resume:
        return out
    if not config.resume and (ckpt_path.exists() or (out / MODEL_META).exists()):
        raise PrealignError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    if config.max_minutes is None and config.max_tokens is None and config.epochs is None:
        cfg["epochs"] = 1.0

    tokenizer, scheme, todo = _load_tokenizer_and_scheme(config)
    init_meta: dict[str, Any] = model_meta(config.init_from) if config.init_from else {}
    if config.variant == "sft" and init_meta.get("variant") not in (None, "sft"):
        variant_name = f"{init_meta['variant']}+sft"
    else:
        variant_name = config.variant

    # the model (built on every rank with the same seed; DDP also broadcasts rank 0's weights)
    torch.manual_seed(config.seed)
    new_ids: list[int] = []
    if config.init_from:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(config.init_from), dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise PrealignError(f"--init-from {config.init_from}: cannot load a causal LM ({e})") from None
        if todo:
            new_ids = extend_with_tags(model, tokenizer, scheme)
        elif len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            raise PrealignError(f"--tokenizer has {len(tokenizer)} tokens, more than the model's embeddings")
        cfg["seq_len"] = min(cfg["seq_len"], getattr(model.config, "max_position_embeddings", cfg["seq_len"]))
    else:
        model = build_model(cfg, tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if config.lora_rank:
        model = apply_lora(model, config.lora_rank, config.lora_alpha)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())

    # the data (rank 0 tokenises; the others wait and read its cache)
    from prealign.data import PackedRows

    if d.main:
        train_docs, val_docs, fingerprint = prepare_tokens(cfg, tokenizer, scheme, out / TOKENS_DIR, config.progress)
    _barrier(d)
    if not d.main:
        train_docs, val_docs, fingerprint = prepare_tokens(cfg, tokenizer, scheme, out / TOKENS_DIR, False)
    T, B, world = cfg["seq_len"], cfg["batch_size"], d.world
    micro = min(cfg["micro_batch_size"], max(1, B // world))
    if B % (micro * world):
        raise PrealignError(f"batch size {B} is not a multiple of micro batch {micro} × {world} process(es)")
    accum = B // (micro * world)
    rows = PackedRows(train_docs, T, seed=config.seed, packing=config.packing)
    val = PackedRows(val_docs, T, shuffle=False, packing=config.packing)
    n_val = min(cfg["val_rows"], val.rows_per_epoch)
    tokens_per_step = B * T
    total_steps = None
    if cfg["max_tokens"] is not None:
        total_steps = math.ceil(cfg["max_tokens"] / tokens_per_step)
    if cfg["epochs"] is not None:
        by_epochs = max(1, math.ceil(cfg["epochs"] * rows.rows_per_epoch / B))
        total_steps = by_epochs if total_steps is None else min(total_steps, by_epochs)
    budget_s = cfg["max_minutes"] * 60 if cfg["max_minutes"] is not None else None

    # optimiser: AdamW, decay on matrices only
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]  # LoRA freezes the base
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), fused=device.startswith("cuda") or None,
    )

    # resume
    state = {"step": 0, "tokens": 0, "targets": 0, "elapsed": 0.0, "warmup_progress": None, "metrics_lines": 0,
             "loss_acc": [0.0, 0.0]}
    if config.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["fingerprint"] != fingerprint:
            raise PrealignError(f"{out}: the data or tokenizer changed since the checkpoint; use a new --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
        state = ck["state"]
    if d.main:  # metrics written after the checkpoint (or by a run killed before its first) are redone
        _truncate_lines(out / METRICS_FILE, state["metrics_lines"])

    raw_model = model
    dev_kind = "cuda" if device.startswith("cuda") else "cpu"
    if dev_kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast
        torch.backends.cudnn.allow_tf32 = True
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[d.local_rank] if device.startswith("cuda") else None)
    use_compile = config.compile if config.compile is not None else dev_kind == "cuda"
    cfg["compile"] = use_compile
    fwd = torch.compile(model) if use_compile else model
    amp_dtype = torch.bfloat16 if cfg["dtype"] == "bfloat16" else None

    def autocast():
        return torch.autocast(dev_kind, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    def to_tensors(toks: np.ndarray, mask: np.ndarray | None):
        """Inputs and targets of packed rows; targets outside the loss mask become -100 (ignored)."""
        x = torch.from_numpy(toks)
        y = x[:, 1:].clone()
        if mask is not None:
            y[torch.from_numpy(mask[:, 1:] == 0)] = -100
        return x[:, :-1].to(device, non_blocking=True), y.to(device, non_blocking=True)

    def evaluate() -> float:
        raw_model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad():
            mine = np.arange(n_val)[d.rank::world]
            for i in range(0, len(mine), micro):
                x, y = to_tensors(*val.get(mine[i:i + micro]))
                with autocast():
                    logits = raw_model(input_ids=x).logits
                total[0] += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
                total[1] += (y != -100).sum()
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        raw_model.train()
        return float(total[0] / total[1].clamp(min=1))

    tracker = _Tracker(config.tracker, out.name, cfg) if d.main else _Tracker("none", "", {})
    metrics_f = None
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        metrics_f = (out / METRICS_FILE).open("a", encoding="utf-8")

    def log(rec: dict[str, Any]) -> None:
        if metrics_f is not None:
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()
            state["metrics_lines"] += 1
            tracker.log(rec)

    def save_checkpoint() -> None:
        if not d.main:
            return
        state["loss_acc"] = loss_acc.tolist()
        with atomic_path(ckpt_path) as tmp:
            torch.save({"model": raw_model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                        "state": dict(state), "fingerprint": fingerprint, "config": cfg}, tmp)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state["step"], unit="step", desc=f"train {variant_name}",
               disable=not (config.progress and d.main), dynamic_ncols=True)
    stop_reason = None
    fwd.train()
    t_start = time.monotonic() - state["elapsed"]
    t_log, tok_log = time.monotonic(), state["tokens"]
    loss_acc = torch.tensor(state["loss_acc"], dtype=torch.float64, device=device)
    last_val = None
    try:
        while True:
            step = state["step"]
            elapsed = time.monotonic() - t_start
            if budget_s is not None and world > 1:  # every rank follows rank 0's clock
                import torch.distributed as dist

                t = torch.tensor([elapsed], dtype=torch.float64, device=device)
                dist.broadcast(t, 0)
                elapsed = float(t[0])
            if total_steps is not None and step >= total_steps:
                stop_reason = "max_tokens" if cfg["max_tokens"] is not None else "epochs"
                break
            if budget_s is not None and elapsed >= budget_s:
                if cfg["exact_budget"] and total_steps is not None and step < total_steps:
                    save_checkpoint()
                    raise PrealignError(
                        f"{out}: the wall-clock cap of {cfg['max_minutes']:g} min ended the run after {state['tokens']:,} of "
                        f"{total_steps * tokens_per_step:,} tokens; the budget must be exact, so this is an error, not a cut. "
                        "Raise the cap (or lower the token budget); a rerun resumes from the checkpoint")
                stop_reason = "max_minutes"
                break
            if config.stop_at_step is not None and step >= config.stop_at_step:
                stop_reason = "stop_at_step"
                break
            progress = step / total_steps if cfg["exact_budget"] else \
                max(step / total_steps if total_steps else 0.0, elapsed / budget_s if budget_s else 0.0)
            if step == cfg["warmup_steps"] and state["warmup_progress"] is None:
                state["warmup_progress"] = progress
            lr = _lr_at(cfg, step, progress, state["warmup_progress"])
            for g in opt.param_groups:
                g["lr"] = lr

            # one optimizer step: rows [step*B, (step+1)*B) split into micro batches and ranks
            first = step * B
            all_rows = first + np.arange(B)
            n_targets = B * T
            if train_docs.mask is not None:  # SFT: normalise by the global number of targets
                n_targets = int(rows.get(all_rows)[1][:, 1:].sum())
            for m in range(accum):
                start = (m * world + d.rank) * micro
                x, y = to_tensors(*rows.get(all_rows[start:start + micro]))
                sync = m == accum - 1 or world == 1
                ctx = model.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
                with ctx:
                    with autocast():
                        logits = fwd(input_ids=x).logits
                    loss_sum = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
                    (loss_sum * (world / max(n_targets, 1))).backward()
                loss_acc[0] += loss_sum.detach()
            loss_acc[1] += n_targets / world
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg["grad_clip"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            state["step"] = step + 1
            state["tokens"] += tokens_per_step
            state["targets"] += n_targets
            state["elapsed"] = time.monotonic() - t_start
            bar.update()

            s = state["step"]
            if s % cfg["log_every"] == 0:
                if world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(loss_acc)
                now = time.monotonic()
                tps = (state["tokens"] - tok_log) / max(now - t_log, 1e-9)
                loss = float(loss_acc[0] / loss_acc[1].clamp(min=1))
                log({"step": s, "tokens": state["tokens"], "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
                     "tokens_per_s": tps, "elapsed_s": state["elapsed"]})
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
                loss_acc.zero_()
                t_log, tok_log = now, state["tokens"]
            if s % cfg["eval_every"] == 0:
                last_val = evaluate()
                log({"step": s, "tokens": state["tokens"], "val_loss": last_val, "elapsed_s": state["elapsed"]})
            if s % cfg["checkpoint_every"] == 0:
                save_checkpoint()
    except KeyboardInterrupt:
        state["elapsed"] = time.monotonic() - t_start
        save_checkpoint()
        raise
    finally:
        bar.close()
        if metrics_f is not None:
            metrics_f.close()

    train_seconds = state["elapsed"]
    if stop_reason == "stop_at_step":
        save_checkpoint()
        tracker.finish()
        _barrier(d)
        return out
    if last_val is None or state["step"] % cfg["eval_every"]:
        last_val = evaluate()
        if d.main:
            with (out / METRICS_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state["step"], "tokens": state["tokens"], "val_loss": last_val,
                                    "elapsed_s": state["elapsed"]}) + "\n")
            state["metrics_lines"] += 1
    save_checkpoint()
    if d.main:
        _save_model(out, raw_model.merge_and_unload() if config.lora_rank else raw_model, tokenizer, scheme, {
            "variant": variant_name,
            "scheme": scheme,
            "preset": config.preset,
            "data": str(config.data),
            "data_hash": fingerprint["data_hash"],
            "init_from": str(config.init_from) if config.init_from else None,
            "init_variant": init_meta.get("variant"),
            "new_token_ids": new_ids,
            "n_params": n_params,
            "steps": state["step"],
            "tokens_seen": state["tokens"],
            "target_tokens": state["targets"],
            "epochs_seen": state["step"] * B / rows.rows_per_epoch,
            "train_seconds": train_seconds,
            "tokens_per_s": state["tokens"] / max(train_seconds, 1e-9),
            "flops_per_token": flops_per_token(raw_model, T),
            "final_val_loss": last_val,
            "stop_reason": stop_reason,
            "world_size": world,
            "lora_rank": config.lora_rank,
            "device": device,
            "train_docs": train_docs.n_docs,
            "val_docs": val_docs.n_docs,
            "finished": True,
        }, cfg, config.seed)
    tracker.finish()
    _barrier(d)
    return out


def apply_lora(model, rank: int, alpha: float | None = None):
    """`model` wrapped with LoRA adapters (peft) of `rank` on every linear layer but the output
    head; only the adapters train. The same call rebuilds a LoRA run's checkpoint for reading."""
    try:
        import peft
    except ImportError:
        raise PrealignError("LoRA needs the peft package: pip install peft (or pip install 'prealign[lora]')") from None
    cfg = peft.LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else 2 * rank), lora_dropout=0.0,
                          target_modules="all-linear", bias="none")
    return peft.get_peft_model(model, cfg)


def _truncate_lines(path: Path, n: int) -> None:
    """Keep the first `n` lines of `path` (metrics written after the checkpoint are redone)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:n]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")


def _save_model(out: Path, model, tokenizer, scheme: str, info: dict[str, Any], cfg: dict[str, Any], seed: int) -> None:
    from prealign.modes import get_scheme
    from prealign.tokenizer import META_FILE

    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    write_json(out / META_FILE, {"scheme": scheme, "tags": list(get_scheme(scheme).tag_texts)})
    write_json(out / MODEL_META, run_meta(cfg, seed, **info))

