"""Where inference runs, and in which precision: CUDA with bf16 autocast when present (unless
`models.device: cpu`), else the CPU in fp32."""

from __future__ import annotations

import contextlib

import torch

from shopflow.core.config import Params


def device_of(params: Params) -> str:
    """The device inference runs on: CUDA when present unless `models.device` is cpu."""
    return "cuda" if params.models.device != "cpu" and torch.cuda.is_available() else "cpu"


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on CPU (fp32 there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
