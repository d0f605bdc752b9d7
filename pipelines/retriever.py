"""Stage `retriever`: fine-tune the adapted encoder into the two-tower retriever.

Reads `data/prepared` and the adapted encoder (`data/models/encoder`); writes the retriever
(`data/models/retriever`: the encoder, the catalogue's vectors and the recommendation prior in
`index/`, per-query test scores in `eval/`), `metrics/retriever.json` and the learning curves
in `dvclive/retriever`. The examples, loss and validation are
`shopflow.training.bi_encoder`; the loop is the one every model shares
(`shopflow.training.trainer`).
"""

from __future__ import annotations

from shopflow.core.config import Params
from shopflow.training.bi_encoder import BiEncoderTask
from shopflow.training.trainer import train


def run(params: Params) -> dict:
    return train(BiEncoderTask(params))
