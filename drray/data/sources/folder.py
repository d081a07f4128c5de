"""Folder per grade: `ROOT/0/*.png` ... `ROOT/4/*.jpg` (any depth below the grade folder).

- The image id is the file stem: the same name under two grade folders is a duplicate_id (the
  first, in grade order, is kept), since it usually is one photograph filed twice.
- Every non-hidden file under a grade folder is a candidate, so a stray non-image becomes a
  not_an_image errors row rather than vanishing.
- Other folders and files directly in the root are not grades: ignored, with a warning.
- Each image is its own patient; no official split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from drray.data.sources import register
from drray.data.sources.base import Candidate, relative
from drray.schema import GRADES

log = logging.getLogger(__name__)


def _visible(path: Path, top: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(top).parts)


@register("folder", looked_for="one folder per grade, 0/ ... 4/, holding the images")
def scan(root: Path, **_options) -> Iterator[Candidate]:
    grade_names = {str(g) for g in GRADES}
    ignored = sorted(p.name for p in root.iterdir() if p.name not in grade_names and not p.name.startswith(".")) \
        if root.is_dir() else []
    if ignored:
        log.warning("%s: ignoring %d entries that are not grade folders 0-4: %s", root, len(ignored),
                    ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else ""))
    for grade in sorted(grade_names):
        top = root / grade
        if not top.is_dir():
            continue
        for path in sorted(p for p in top.rglob("*") if p.is_file() and _visible(p, top)):
            yield Candidate(image_id=path.stem, path=relative(root, path), label=grade, where=str(path))
