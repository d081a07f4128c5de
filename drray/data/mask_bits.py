"""Lesion masks packed as bits: one (S, S) uint8 array per photograph, bit i set where `MASK_TYPES[i]` is present.

Packed, a photograph's six masks cost one byte per pixel through Ray's object store; scoring
unpacks the types it needs.
"""

from __future__ import annotations

import numpy as np

from drray.schema import MASK_TYPES


def mask_bits(masks: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pack boolean masks by type into one uint8 array: bit i <-> MASK_TYPES[i]."""
    out = np.zeros(shape, dtype=np.uint8)
    for i, t in enumerate(MASK_TYPES):
        m = masks.get(t)
        if m is not None:
            out |= (m.astype(bool).astype(np.uint8) << i)
    return out


def unpack_mask(bits: np.ndarray, types: tuple[str, ...] | str) -> np.ndarray:
    """Boolean mask of the union of `types` from packed bits (any leading shape)."""
    if isinstance(types, str):
        types = (types,)
    sel = 0
    for t in types:
        sel |= 1 << MASK_TYPES.index(t)
    return (bits & sel) != 0
