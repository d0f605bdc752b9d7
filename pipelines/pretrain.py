"""Stage `pretrain`: domain-adaptive masked-LM pretraining of the base encoder (pretrain-adapt).

Reads `data/prepared/corpus.txt` only, so an unchanged catalogue and query log never re-run
it. Writes the adapted encoder + tokenizer (`data/models/encoder`), the held-out MLM loss
before and after (`metrics/pretrain.json`) and the learning curves (`dvclive/pretrain`); the
stage fails if the held-out loss did not drop (`shopflow.training.masked_lm`). With
`pretrain.enabled: false` the base encoder passes through unchanged: the ablation is one
param away.
"""

from __future__ import annotations

import logging

from shopflow.core import paths
from shopflow.core.artifacts import staged_dir, write_json
from shopflow.core.config import Params
from shopflow.core.errors import StageInputError
from shopflow.models.base import resolve_base_model
from shopflow.training.masked_lm import MaskedLMTask, save_encoder
from shopflow.training.runtime import stage_runtime
from shopflow.training.trainer import train, write_curve

log = logging.getLogger(__name__)


def run(params: Params) -> dict:
    base = resolve_base_model(params.models.base, params.models.allow_download)
    if not params.pretrain.enabled:
        return pass_through(params, base)
    if not paths.CORPUS.exists():
        raise StageInputError(f"{paths.CORPUS}: not found; run the prepare stage first")
    text = paths.CORPUS.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    return train(MaskedLMTask(params, base, lines))


def pass_through(params: Params, base: str) -> dict:
    """The base encoder written unchanged as this stage's output (`pretrain.enabled: false`)."""
    from transformers import AutoModel, AutoTokenizer

    log.info(
        "pretrain.enabled is false: passing the base encoder %s through unchanged",
        params.models.base,
    )
    result = {"enabled": False, "base_model": params.models.base}
    with stage_runtime(params.models.device) as runtime:
        if runtime.is_main:
            with staged_dir(paths.ENCODER) as staging:
                save_encoder(
                    AutoModel.from_pretrained(base),
                    AutoTokenizer.from_pretrained(base),
                    staging,
                    result,
                )
            write_json(paths.metrics("pretrain"), result)
            write_curve(paths.live("pretrain"), {"train/mlm_loss": []}, {"enabled": 0})
    return result
