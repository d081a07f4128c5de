"""State dicts in and out of model dirs: safetensors-ready copies and weight digests.

Foreign checkpoints (`model.pretrained_path`: RETFound, DINOv2, DDP, Lightning, timm ...) are read and
mapped onto a backbone by drray.models.checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

log = logging.getLogger(__name__)

def detached_state(module) -> dict[str, Any]:
    """A CPU, contiguous copy-on-need of `module.state_dict()` that safetensors can write.

    safetensors refuses tensors sharing storage (tied weights); those are cloned.
    """
    seen: set[int] = set()
    out = {}
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
        seen.add(ptr)
        out[k] = t
    return out


def weights_digest(state: dict[str, Any], extra: Any = None) -> str:
    """sha1 hex of names, dtypes, shapes and bytes of every tensor (sorted by name), plus repr(extra)."""
    import torch

    h = hashlib.sha1()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    if extra is not None:
        h.update(repr(extra).encode())
    return h.hexdigest()
