"""The segmentations a segment value is re-measured on, to bound what the segmentation contributes.

A segment's value depends on where the network put the myocardium's borders and where it found
the insertion point. Re-measuring it on slightly different, equally plausible segmentations
gives the size of that dependence (docs/segment-values.md):

- ``border``: the myocardium eroded and dilated by one pixel (the network's typical boundary
  error), segments re-assigned on each;
- ``partial_volume``: the border pixels kept (the segment's values use its core);
- ``insertion_point``: every sector boundary turned by +/- ``ROTATION_DEG`` (10 degrees: between
  the 75th and 80th percentile of the network's anterior insertion-point error on held-out
  synthetic slices).

T2 (``pinn_engine.t2.segments``) and perfusion (``pinn_engine.perfusion.quantify``) both add the
largest change each kind of variant makes to their bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage

from pinn_engine.aha import SliceGeometry, assign_aha
from pinn_engine.segmentation.labels import Label

ROTATION_DEG = 10.0
KINDS = ("border", "partial_volume", "insertion_point")
# how the report names each kind of variant among the error sources a bound covers
DESCRIPTIONS = {"border": "myocardial border +/- 1 pixel", "partial_volume": "partial volume at the borders",
                "insertion_point": f"insertion point +/- {ROTATION_DEG:g} deg"}
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Variant:
    kind: str  # one of KINDS
    myocardium: np.ndarray  # (slices, H, W) bool
    aha: np.ndarray  # (slices, H, W) AHA labels
    use_core: bool  # whether the segment value is taken over the core of ``myocardium``


def myocardial_core(myocardium: np.ndarray) -> np.ndarray:
    """The myocardium's pixels not 4-adjacent to anything else, slice by slice."""
    return np.stack([ndimage.binary_erosion(m, _CROSS) for m in myocardium])


def _one_pixel(labels: np.ndarray, grow: bool) -> np.ndarray:
    """The label map with the myocardium one pixel wider (into its neighbours) or narrower."""
    myocardium = labels == Label.MYOCARDIUM
    out = labels.copy()
    if grow:
        wider = np.stack([ndimage.binary_dilation(m, _CROSS) for m in myocardium])
        out[wider & ~myocardium] = Label.MYOCARDIUM
    else:
        # what the myocardium loses goes to the LV pool where it borders it, else to the background
        lv = np.stack([ndimage.binary_dilation(m, _CROSS, iterations=2) for m in labels == Label.LV_BLOOD_POOL])
        lost = myocardium & ~myocardial_core(myocardium)
        out[lost] = np.where(lv[lost], Label.LV_BLOOD_POOL, Label.BACKGROUND)
    return out


def segmentation_variants(labels: np.ndarray, geometry: Sequence[SliceGeometry],
                          aha: np.ndarray) -> Iterator[Variant]:
    """The variants of the segmentation ``labels`` (with its AHA labels ``aha``), kind by kind."""
    geometry = list(geometry)
    myocardium = labels == Label.MYOCARDIUM
    for grow in (False, True):
        other = _one_pixel(labels, grow)
        yield Variant("border", other == Label.MYOCARDIUM, assign_aha(other, geometry).labels, True)
    yield Variant("partial_volume", myocardium, aha, False)
    for turn in (-ROTATION_DEG, ROTATION_DEG):
        yield Variant("insertion_point", myocardium, assign_aha(labels, geometry, rotation_deg=turn).labels, True)
