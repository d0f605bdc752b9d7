"""Stage `pretrain`: domain-adaptive masked-LM pretraining of the base encoder (pretrain-adapt).

The base encoder (params `models.base`) keeps learning masked-token prediction on the shop's
own text (`data/prepared/corpus.txt`: titles, descriptions, attribute strings, training
queries), so that words like "couch" and "settee" move close to the products they describe
before fine-tuning. all-MiniLM-L6-v2 ships without a masked-LM head: the head's decoder is tied
to the input embeddings and its transform starts as the identity, so the untrained head already
scores tokens by similarity to the final hidden state, instead of by noise.

Writes the adapted encoder + tokenizer (`data/models/encoder`), held-out MLM loss before and
after (`metrics/pretrain.json`) and the learning curve (`dvclive/pretrain`). The stage fails
if the held-out loss did not drop. With `pretrain.enabled: false` the base encoder passes
through unchanged, so the ablation is one param away.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from pipelines.artifacts import staged_dir, write_json
from pipelines.config import Params
from pipelines.encoders import resolve_base_model
from pipelines.errors import ShopflowError, StageInputError
from pipelines.training import (
    Runtime,
    batch_order,
    fit,
    run_key,
    shard,
    stage_runtime,
    throughput,
    unwrap,
    write_curve,
)

log = logging.getLogger(__name__)

CORPUS = Path("data/prepared/corpus.txt")
OUT_DIR = Path("data/models/encoder")
METRICS = Path("metrics/pretrain.json")
LIVE_DIR = Path("dvclive/pretrain")
EVAL_SEED = 12345


class TrainingError(ShopflowError):
    """Training ran but did not do what the stage promises (e.g. the loss did not drop)."""


def split_corpus(lines: list[str], params: Params) -> tuple[list[str], list[str]]:
    """A seeded held-out slice of the corpus (at least 8 lines), the rest for training."""
    cfg = params.pretrain
    generator = torch.Generator().manual_seed(params.seed)
    order = torch.randperm(len(lines), generator=generator).tolist()
    n_heldout = min(max(8, round(len(lines) * cfg.heldout_share)), cfg.max_heldout_lines)
    if len(lines) < n_heldout + 8:
        raise StageInputError(f"{CORPUS}: {len(lines)} lines is too little text to pretrain on")
    heldout = [lines[i] for i in order[:n_heldout]]
    train = [lines[i] for i in order[n_heldout:]]
    return train, heldout


def mask_tokens(
    ids: torch.Tensor, special: torch.Tensor, prob: float, generator: torch.Generator, tokenizer
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (80% [MASK], 10% random token, 10% unchanged) from an explicit generator."""
    labels = ids.clone()
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & ~special
    labels[~chosen] = -100
    inputs = ids.clone()
    replace = chosen & (torch.rand(ids.shape, generator=generator) < 0.8)
    inputs[replace] = tokenizer.mask_token_id
    randomize = chosen & ~replace & (torch.rand(ids.shape, generator=generator) < 0.5)
    inputs[randomize] = torch.randint(len(tokenizer), ids.shape, generator=generator)[randomize]
    return inputs, labels


class Encoded:
    """Pre-tokenised text: the trainer never waits on the tokenizer."""

    def __init__(self, lines: list[str], tokenizer, max_len: int) -> None:
        encoded = tokenizer(
            lines, truncation=True, max_length=max_len, return_special_tokens_mask=True
        )
        self.ids = [torch.tensor(x) for x in encoded["input_ids"]]
        self.special = [torch.tensor(x, dtype=torch.bool) for x in encoded["special_tokens_mask"]]
        self.lengths = torch.tensor([len(x) for x in self.ids])
        self.pad_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dynamic padding to the longest row of this batch."""
        rows = index.tolist()
        width = int(self.lengths[index].max())
        ids = torch.full((len(rows), width), self.pad_id)
        special = torch.ones((len(rows), width), dtype=torch.bool)
        for r, i in enumerate(rows):
            ids[r, : len(self.ids[i])] = self.ids[i]
            special[r, : len(self.ids[i])] = self.special[i]
        return ids, special, ids != self.pad_id


def load_mlm(base: str, runtime: Runtime):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model, info = AutoModelForMaskedLM.from_pretrained(base, output_loading_info=True)
    fresh_head = any("transform.dense" in key for key in info["missing_keys"])
    if fresh_head and hasattr(model, "cls"):
        transform = model.cls.predictions.transform
        with torch.no_grad():
            transform.dense.weight.copy_(torch.eye(transform.dense.weight.shape[0]))
            transform.dense.bias.zero_()
            model.cls.predictions.bias.zero_()
        log.info("no masked-LM head in the base model: decoder tied to embeddings, transform = I")
    return tokenizer, model.to(runtime.device)


@torch.no_grad()
def heldout_loss(model, data: Encoded, tokenizer, params: Params, runtime: Runtime) -> float:
    """Mean masked-token loss over the held-out lines, with the same masks every time."""
    model.eval()
    generator = torch.Generator().manual_seed(EVAL_SEED)
    total, count = 0.0, 0
    size = params.pretrain.batch_size
    for start in range(0, len(data), size):
        index = torch.arange(start, min(start + size, len(data)))
        ids, special, attention = data.batch(index)
        inputs, labels = mask_tokens(ids, special, params.pretrain.mask_prob, generator, tokenizer)
        with runtime.autocast():
            logits = unwrap(model)(
                input_ids=inputs.to(runtime.device), attention_mask=attention.to(runtime.device)
            ).logits
        mask = labels != -100
        if mask.any():
            loss = torch.nn.functional.cross_entropy(
                logits.float()[mask.to(runtime.device)],
                labels[mask].to(runtime.device),
                reduction="sum",
            )
            total += float(loss)
            count += int(mask.sum())
    model.train()
    return total / max(count, 1)


def save_encoder(model, tokenizer, out_dir: Path, meta: dict) -> None:
    """The encoder without any head (`base_model` of a plain encoder is the encoder itself)."""
    with staged_dir(out_dir) as staging:
        unwrap(model).base_model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_json(staging / "shopflow.json", meta)


def run(
    params: Params, corpus_path: Path = CORPUS, out_dir: Path = OUT_DIR, metrics: Path = METRICS
) -> dict:
    cfg = params.pretrain
    base = resolve_base_model(params.models.base, params.models.allow_download)
    with stage_runtime(params.models.device) as runtime:
        return _run(params, cfg, base, runtime, corpus_path, out_dir, metrics)


def _run(params, cfg, base, runtime, corpus_path, out_dir, metrics) -> dict:
    from transformers import AutoModel, AutoTokenizer

    if not cfg.enabled:
        log.info(
            "pretrain.enabled is false: passing the base encoder %s through unchanged",
            params.models.base,
        )
        result = {"enabled": False, "base_model": params.models.base}
        if runtime.is_main:
            encoder = AutoModel.from_pretrained(base)
            save_encoder(encoder, AutoTokenizer.from_pretrained(base), out_dir, result)
            write_json(metrics, result)
            write_curve(LIVE_DIR, {"train/mlm_loss": []}, {"enabled": 0})  # an empty curve
        return result
    if not corpus_path.exists():
        raise StageInputError(f"{corpus_path}: not found; run the prepare stage first")
    lines = [line for line in corpus_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train_lines, heldout_lines = split_corpus(lines, params)
    torch.manual_seed(params.seed)
    tokenizer, model = load_mlm(base, runtime)
    train, heldout = (
        Encoded(train_lines, tokenizer, cfg.max_seq_len),
        Encoded(heldout_lines, tokenizer, cfg.max_seq_len),
    )
    log.info("pretrain: %d training lines, %d held out", len(train), len(heldout))

    key = run_key(
        text=hash_lines(lines), params=cfg.model_dump(), base=params.models.base,
        seed=params.seed, world=runtime.world_size,
    )  # fmt: skip
    lengths = train.lengths if cfg.group_by_length else None
    tokens = 0

    def loss_of_step(forward, step: int) -> torch.Tensor:
        nonlocal tokens
        index = shard(batch_order(len(train), cfg.batch_size, params.seed, step, lengths), runtime)
        ids, special, attention = train.batch(index)
        generator = torch.Generator().manual_seed(params.seed * 7919 + step)
        inputs, labels = mask_tokens(ids, special, cfg.mask_prob, generator, tokenizer)
        tokens += int(attention.sum())
        with runtime.autocast():
            out = forward(
                input_ids=inputs.to(runtime.device),
                attention_mask=attention.to(runtime.device),
                labels=labels.to(runtime.device),
            )
        return out.loss

    fitted = fit(
        stage="pretrain", model=model, runtime=runtime, cfg=cfg, seed=params.seed, key=key,
        loss_of_step=loss_of_step,
        validate=lambda m: heldout_loss(m, heldout, tokenizer, params, runtime),
    )  # fmt: skip
    # the held-out loss before the first step and after the last (the validation curve's ends)
    (_, before), (_, after) = fitted.valid_history[0], fitted.valid_history[-1]
    result = {
        "enabled": True,
        "base_model": params.models.base,
        "device": str(runtime.device),
        "world_size": runtime.world_size,
        "steps": cfg.steps,
        "resumed_from_step": fitted.resumed_from,
        "heldout_lines": len(heldout),
        "heldout_loss_before": round(before, 4),
        "heldout_loss_after": round(after, 4),
        "heldout_perplexity_after": round(math.exp(min(after, 50)), 2),
        "relative_drop": round((before - after) / before, 4),
        **throughput(fitted, cfg.batch_size, tokens, runtime.world_size),
    }
    log.info(
        "pretrain: held-out MLM loss %.4f -> %.4f (%.1f%% lower)",
        before,
        after,
        100 * result["relative_drop"],
    )
    if not after < before:
        raise TrainingError(
            f"pretrain: the held-out MLM loss did not drop ({before:.4f} -> {after:.4f}); "
            f"check pretrain.lr / pretrain.steps. The encoder was not written."
        )
    if runtime.is_main:
        save_encoder(model, tokenizer, out_dir, {"base_model": params.models.base, **result})
        write_json(metrics, result)
        write_curve(
            LIVE_DIR,
            {"train/mlm_loss": fitted.history, "valid/mlm_loss": fitted.valid_history},
            {"heldout_loss_before": before, "heldout_loss_after": after},
        )
        fitted.done()
    return result


def hash_lines(lines: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
