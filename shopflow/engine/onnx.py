"""The optional ONNX Runtime path for CPU serving: the reranker and the query tower exported to
ONNX (fp32) and dynamically quantised to int8.

Shops pay for every CPU-second of inference; ONNX Runtime's fused CPU kernels and int8
weights cut it. The exported graphs are the same models (batch and sequence length dynamic),
wrapped here behind the call signatures `CrossEncoderModule` and `TextEncoder` already use,
so the engine does not know which runtime scores. The model store measures NDCG@10 and speed
of torch, fp32 and int8 on the test split before it chooses
(`serving.model_store.choose_onnx`): int8 is only offered when its NDCG@10 drop is under
`serving.max_int8_ndcg_drop`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

RERANKER_FILE = "reranker.onnx"
QUERY_FILE = "query_encoder.onnx"
PRECISIONS = ("fp32", "int8")


class _QueryTower(torch.nn.Module):
    """TextEncoder.embed as a module's forward (what the exporter traces)."""

    def __init__(self, encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder.embed(ids, mask)


def _export(module: torch.nn.Module, args: tuple, names: list[str], out: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=8192)
    seq = torch.export.Dim("seq", min=2, max=512)
    shapes = tuple({0: batch} if a.ndim == 1 else {0: batch, 1: seq} for a in args)
    torch.onnx.export(
        module.eval(),
        args,
        str(out),
        input_names=names,
        output_names=["out"],
        dynamic_shapes=shapes,
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def export(bundle: Path) -> Path:
    """Write fp32 and int8 ONNX graphs of the bundle's reranker and query tower to onnx/."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from shopflow.models.bi_encoder import TextEncoder
    from shopflow.models.cross_encoder import CrossEncoderModule

    folder = bundle / "onnx"
    (folder / "fp32").mkdir(parents=True, exist_ok=True)
    (folder / "int8").mkdir(parents=True, exist_ok=True)
    ids = torch.randint(1000, 2000, (4, 16))
    ones = torch.ones_like(ids)
    started = time.perf_counter()
    tower = _QueryTower(TextEncoder.from_pretrained(bundle / "retriever"))
    _export(tower, (ids, ones), ["ids", "mask"], folder / "fp32" / QUERY_FILE)
    if (bundle / "reranker" / "config.json").exists():
        cross = CrossEncoderModule.from_pretrained(bundle / "reranker")
        _export(
            cross,
            (ids, torch.zeros_like(ids), ones, torch.rand(4)),
            ["ids", "types", "mask", "prior"],
            folder / "fp32" / RERANKER_FILE,
        )
    for path in (folder / "fp32").glob("*.onnx"):
        quantize_dynamic(str(path), str(folder / "int8" / path.name), weight_type=QuantType.QInt8)
    log.info("exported ONNX fp32 + int8 graphs in %.0fs", time.perf_counter() - started)
    return folder


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxCrossEncoder:
    """Called like `CrossEncoderModule`: (ids, types, mask, prior) -> scores."""

    def __init__(self, path: Path) -> None:
        self.session = _session(path)

    def __call__(self, ids, types, mask, prior) -> torch.Tensor:
        feed = {
            "ids": ids.numpy(),
            "types": types.numpy(),
            "mask": mask.numpy(),
            "prior": prior.numpy().astype(np.float32),
        }
        return torch.from_numpy(self.session.run(None, feed)[0])

    def to(self, device) -> OnnxCrossEncoder:
        return self

    def eval(self) -> OnnxCrossEncoder:
        return self


class OnnxTextEncoder:
    """Has `embed` and `dim` like `TextEncoder` (the query tower only: products are
    pre-embedded)."""

    def __init__(self, path: Path, dim: int) -> None:
        self.session = _session(path)
        self.dim = dim

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(
            self.session.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})[0]
        )

    def to(self, device) -> OnnxTextEncoder:
        return self

    def eval(self) -> OnnxTextEncoder:
        return self


def use_onnx(engine, folder: Path) -> None:
    """Swap the engine's query tower and reranker for the ONNX graphs in `folder`."""
    engine.retriever.model = OnnxTextEncoder(folder / QUERY_FILE, engine.retriever.dim)
    if engine.reranker is not None and (folder / RERANKER_FILE).exists():
        engine.reranker.model = OnnxCrossEncoder(folder / RERANKER_FILE)
