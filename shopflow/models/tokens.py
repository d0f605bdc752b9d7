"""Text to token ids, once, up front; batches padded only to their own longest row.

Every model tokenises its texts before training or inference starts (the trainer never waits
on the tokenizer), and inference sorts texts by length so little compute goes to padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def tokenize(tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids with the tokenizer's special tokens, truncated to `max_len`."""
    return tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]


def pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row: (ids, attention mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Batches of indices with similar lengths (for inference; order restored by the caller)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
