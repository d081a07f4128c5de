"""A config field that does not hold raises one clear ValueError naming the field, the value and the fix."""

from __future__ import annotations


def check(cond: bool, msg: str) -> None:
    """Raise `ValueError(msg)` unless `cond`."""
    if not cond:
        raise ValueError(msg)
