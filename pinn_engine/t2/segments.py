"""Segment values that estimate the myocardium's T2, with bounds that include the segmentation.

The report's "mean +/- bound" of an AHA segment is read as the T2 of that sector's myocardium,
not of whatever pixels the segmentation put in it. Pixels at the blood-myocardium border
(partial volume, a mask one pixel too wide, trabeculae) and blood or fat inside the mask pull
a plain mean up by as much as oedema does. So (docs/segment-values.md):

Value: the mean over the segment's **myocardial core** (its pixels not 4-adjacent to anything
but myocardium: one-pixel endo- and epicardial offsets, as clinical tools use), used when the
core holds at least a third of the segment's usable pixels, after **excluding pixels whose
signal evolution is not myocardium's**: a T2 farther from the core's median than 3 robust SDs
(1.4826 x MAD) and than ``MYOCARDIAL_RANGE_MS`` (25 ms: acute oedema lies up to ~25 ms above
normal myocardium, blood and its mixtures hundreds of ms away; focal oedema in an otherwise
normal segment stays); minus the least-squares fit's second-order noise bias (var/T2 per pixel).
The whole LV myocardium's value is the segments' values weighted by their myocardial areas.

Bound at ``confidence``, the sum of one term per error source (``COVERS``):
- noise: z sqrt(sum var_i) / n over the pixels used (Cramer-Rao variances at the upper noise
  limit), half the bias correction, and for the PINN the distance of its mean to the reference
  fit's;
- myocardial border position: the largest change of the value when the myocardium is eroded or
  dilated by one pixel (the network's boundary error; segments re-assigned each time);
- partial volume: the change when the border pixels are not left out (the core's effect);
- insertion point: the largest change when every sector boundary turns by +/- 10 degrees
  (``pinn_engine.segment_variants`` makes these segmentations and says why their sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy import stats

from pinn_engine.aha import SliceGeometry, assign_aha
from pinn_engine.segment_variants import DESCRIPTIONS, KINDS, myocardial_core, segmentation_variants
from pinn_engine.segmentation.labels import Label
from pinn_engine.t2.flags import EXCLUDE
from pinn_engine.t2.model import crlb_sd_t2

if TYPE_CHECKING:
    from pinn_engine.t2.fit import T2Fit

OUTLIER_SDS = 3.0
MYOCARDIAL_RANGE_MS = 25.0
CORE_MIN_SHARE = 1.0 / 3.0
MIN_PIXELS = 10
# the error sources every segment bound covers, as the SR and the display copies name them
COVERS = ("noise", "fit bias", *DESCRIPTIONS.values())


@dataclass(frozen=True)
class SegmentValue:
    aha: int | None  # AHA segment, None: the whole LV myocardium (the segments measured)
    mean_ms: float
    sd_ms: float  # spread of the pixels used
    bound_ms: float  # |mean - the sector's myocardial T2| <= bound with the stated confidence
    noise_ms: float  # the bound's parts: noise and fit bias,
    mask_ms: float  # the myocardial border's position,
    sector_ms: float  # the insertion point,
    border_ms: float  # partial volume at the borders
    n_pixels: int  # pixels the value comes from
    n_excluded: int  # pixels of the segment not used (border, outliers, flagged)
    slices: tuple[int, ...]  # 0-based slices the segment lies in


def _noise(fit: "T2Fit", used: np.ndarray) -> tuple[float, float]:
    """(bias, bound) of the mean of ``fit`` over ``used`` from noise.

    The least-squares T2 is biased upwards by ~var/T2 per pixel at low SNR (E[1/R_hat] ~ 1/R +
    var(R_hat)/R^3); the value subtracts the bias estimated with the noise SD, and the bound
    keeps half of it for the estimate's own error, beside z sqrt(sum var_i) / n with the upper
    noise limit and, for the PINN, the distance of its mean to the reference fit's.
    """
    ref = fit.t2_reference_ms[used]
    n = ref.size
    bias = float(np.sum(crlb_sd_t2(ref, fit.m0[used] / fit.noise.sigma, fit.te_ms) ** 2 / ref)) / n
    sd_upper = crlb_sd_t2(ref, fit.m0[used] / fit.noise.sigma_upper, fit.te_ms)
    z = stats.norm.ppf(0.5 + fit.confidence / 2)
    spread = z * float(np.sqrt(np.sum(sd_upper**2))) / n
    return bias, spread + 0.5 * bias + abs(float(fit.t2_ms[used].mean() - ref.mean()))


def _robust(values: np.ndarray) -> np.ndarray:
    """Which of ``values`` lie within OUTLIER_SDS robust SDs of their median, or within
    MYOCARDIAL_RANGE_MS of it (focal oedema in a normal segment is not an outlier)."""
    median = np.median(values)
    sd = 1.4826 * np.median(np.abs(values - median))
    return np.abs(values - median) <= max(OUTLIER_SDS * sd, MYOCARDIAL_RANGE_MS)


def _pixels(t2: np.ndarray, usable: np.ndarray, region: np.ndarray, core: np.ndarray) -> np.ndarray:
    """The pixels (bool mask) a region's value comes from: its core if large enough, outliers out."""
    region = region & usable
    inner = region & core
    use = inner if inner.sum() >= max(MIN_PIXELS, CORE_MIN_SHARE * region.sum()) else region
    if use.sum() < 3:
        return use
    keep = np.zeros_like(use)
    keep[use] = _robust(t2[use])
    return keep


def _values(t2: np.ndarray, usable: np.ndarray, myocardium: np.ndarray, aha: np.ndarray,
            use_core: bool = True) -> dict:
    """Segment (and None: the whole) -> (value, pixels used) for one segmentation.

    The whole LV myocardium's value is the mean of the segments' values weighted by their
    myocardial areas: the quantity its truth is (the mean over all myocardium), without the
    core giving thin segments less weight than thick ones.
    """
    core = myocardial_core(myocardium) if use_core else np.zeros_like(myocardium)
    out = {}
    areas = {}
    for s in sorted(int(v) for v in np.unique(aha[myocardium]) if v):
        used = _pixels(t2, usable, myocardium & (aha == s), core)
        if used.any():
            out[s] = (float(t2[used].mean()), used)
            areas[s] = float((myocardium & (aha == s) & usable).sum())
    if out:
        union = np.logical_or.reduce([used for _, used in out.values()])
        whole = sum(areas[s] * out[s][0] for s in out) / sum(areas.values())
        out[None] = (float(whole), union)
    return out


def _heart_box(fit: "T2Fit", labels: np.ndarray, aha: np.ndarray) -> tuple:
    """``fit``'s maps, ``labels`` and ``aha`` cut to the heart (every label) and a margin."""
    heart = labels != Label.BACKGROUND
    if not heart.any():
        return fit, labels, aha
    margin = 4  # the one-pixel dilation and the erosions around it
    rows, cols = np.nonzero(heart.any(axis=(0, 2)))[0], np.nonzero(heart.any(axis=(0, 1)))[0]
    box = (slice(None), slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
           slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))
    maps = SimpleNamespace(t2_ms=fit.t2_ms[box], t2_reference_ms=fit.t2_reference_ms[box], m0=fit.m0[box],
                           flags=fit.flags[box], noise=fit.noise, te_ms=fit.te_ms, confidence=fit.confidence)
    return maps, labels[box], aha[box]


def segment_statistics(fit: "T2Fit", labels: np.ndarray, geometry: Sequence[SliceGeometry],
                       aha: np.ndarray | None = None) -> list[SegmentValue]:
    """The whole LV myocardium's and every AHA segment's value with its bound (see the module).

    ``labels``: the segmentation (``Label`` values) the maps were measured with; ``aha``: its
    AHA labels (``assign_aha(labels, geometry).labels`` when not given).
    """
    labels = np.asarray(labels)
    if aha is None:
        aha = assign_aha(labels, list(geometry)).labels
    # the heart's bounding box is all that matters (a fifth of the image: 0.14 -> 0.04 s at 192^2);
    # an in-plane crop leaves the AHA assignment as it was (it uses positions relative to the LV)
    fit, labels, aha = _heart_box(fit, labels, np.asarray(aha))
    usable = (fit.flags & int(EXCLUDE)) == 0
    t2 = fit.t2_ms
    myocardium = labels == Label.MYOCARDIUM
    base = _values(t2, usable, myocardium, aha)
    variants = [(v.kind, _values(t2, usable, v.myocardium, v.aha, use_core=v.use_core))
                for v in segmentation_variants(labels, geometry, aha)]
    out = []
    for s, (value, used) in base.items():
        if not used.any():
            continue
        change = dict.fromkeys(KINDS, 0.0)
        for kind, values in variants:
            other = values.get(s, (float("nan"),))[0]
            if np.isfinite(other):
                change[kind] = max(change[kind], abs(other - value))
        bias, noise = _noise(fit, used)
        region = (aha > 0) if s is None else (aha == s)
        out.append(SegmentValue(
            aha=s, mean_ms=value - bias, sd_ms=float(t2[used].std(ddof=1)) if used.sum() > 1 else 0.0,
            bound_ms=float(noise + sum(change.values())), noise_ms=float(noise), mask_ms=change["border"],
            sector_ms=change["insertion_point"], border_ms=change["partial_volume"],
            n_pixels=int(used.sum()), n_excluded=int((region & myocardium).sum() - used.sum()),
            slices=tuple(int(k) for k in np.nonzero(region.any(axis=(1, 2)))[0])))
    return out
