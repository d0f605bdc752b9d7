"""Stage `reranker`: fine-tune the adapted encoder into the cross-encoder over (query, product).

Reads `data/prepared`, the adapted encoder, the retriever (whose similarity is the
reranker's prior) and the baselines' per-query scores; writes the reranker
(`data/models/reranker`, per-query test scores in `eval/`, position propensities),
`metrics/reranker.json` with paired tests against BM25, the zero-shot encoder and the
retriever alone, and the learning curves in `dvclive/reranker`. A shop without search data
gets a marker instead of a model, and serving ranks by the retriever alone. The groups, loss
and validation are `shopflow.training.cross_encoder`.
"""

from __future__ import annotations

from shopflow.core.config import Params
from shopflow.training.cross_encoder import CrossEncoderTask
from shopflow.training.trainer import train


def run(params: Params) -> dict:
    return train(CrossEncoderTask(params))
