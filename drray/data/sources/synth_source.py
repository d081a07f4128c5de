"""The synthetic set `drray synth` writes (see drray.data.synth).

Layout: `labels.csv` with columns image_id,path,label,patient_id,eye,mask_ma,mask_he,mask_ex,
mask_se,mask_nv,mask_od (paths relative to the root; an empty mask cell = no mask). No official
split: rows are split by patient like any source without one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from drray.data.sources import register
from drray.data.sources.base import Candidate, Problem
from drray.data.sources.csv_source import scan_table


@register("synth", looked_for="labels.csv (image_id,path,label,patient_id,eye,mask_*) as written by `drray synth`")
def scan(root: Path, **_options) -> Iterator[Candidate | Problem]:
    yield from scan_table(root, root / "labels.csv", path_column="path", label_column="label",
                          id_column="image_id", patient_column="patient_id")
