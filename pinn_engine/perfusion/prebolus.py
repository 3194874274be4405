"""Arterial input from a pre-bolus (dual-bolus) series.

At full dose the LV blood signal of a saturation-recovery perfusion readout is compressed
at the peak (T2* loss, and the saturation of the signal model itself), so its first pass
is underestimated and flows are overestimated. A pre-bolus, a small fraction of the dose
given shortly before the main bolus and imaged with the same sequence, keeps the blood
signal in its linear range. For a linear, time-invariant circulation its input scaled by
the dose ratio is the main bolus's input. Each series has its own clock, so the scaled
curve is shifted in time onto the main bolus: first by the arrival times (10 % of each
curve's enhancement), then refined to match the main curve's foot, the frames of its
up-slope below ``FOOT`` of its peak, which are too low to be saturated (a tenth of a
second matters: the flow comes from the first seconds of the tissue curves). Beyond the
end of the pre-bolus series the main bolus's own curve (low concentrations by then) is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PreBolus:
    frames: np.ndarray  # (T', H, W) the AIF slice of the pre-bolus series, aligned with the main series
    t_min: np.ndarray  # (T',) its frame times, minutes (own clock)
    dose_ratio: float  # main dose / pre-bolus dose
    saturation_delay_ms: float | None = None  # from its headers, when they carry it

    def __post_init__(self) -> None:
        if self.frames.ndim != 3 or self.frames.shape[0] != np.asarray(self.t_min).shape[0]:
            raise ValueError(f"pre-bolus frames {self.frames.shape} do not match {np.shape(self.t_min)} frame times")
        if self.frames.shape[0] < 10:
            raise ValueError(f"a pre-bolus series needs >= 10 frames, got {self.frames.shape[0]}")
        if not 1.0 < self.dose_ratio <= 100.0:
            raise ValueError(f"pre-bolus dose ratio must be in (1, 100], got {self.dose_ratio}")


def arrival_s(t_s: np.ndarray, curve: np.ndarray, baseline_frames: int) -> float:
    """When ``curve`` first rises past 10 % of its enhancement (linear interpolation between frames)."""
    base = float(np.mean(curve[:baseline_frames]))
    level = base + 0.1 * (float(np.max(curve)) - base)
    k = int(np.argmax(curve >= level))
    if k == 0:
        return float(t_s[0])
    f = (level - curve[k - 1]) / max(curve[k] - curve[k - 1], 1e-12)
    return float(t_s[k - 1] + f * (t_s[k] - t_s[k - 1]))


FOOT = 0.4  # of the main curve's peak: its up-slope below this is taken as unsaturated


def _foot_shift(t_s: np.ndarray, main: np.ndarray, main_baseline: int, t_pre_s: np.ndarray, scaled: np.ndarray,
                guess: float, reach_s: float = 2.0, step_s: float = 0.02) -> float:
    """The shift within ``reach_s`` of ``guess`` that best matches the main curve's foot."""
    peak = int(np.argmax(main))
    foot = [k for k in range(max(main_baseline - 1, 0), peak) if main[k] < FOOT * main[peak]]
    if len(foot) < 3:
        return guess
    shifts = guess + np.arange(-reach_s, reach_s + step_s / 2, step_s)
    model = np.interp(t_s[foot][None, :] - shifts[:, None], t_pre_s, scaled, left=0.0)
    return float(shifts[np.argmin(((model - main[foot]) ** 2).sum(1))])


def scaled_input(t_s: np.ndarray, main: np.ndarray, main_baseline: int, t_pre_s: np.ndarray, pre: np.ndarray,
                 pre_baseline: int, dose_ratio: float) -> tuple[np.ndarray, float]:
    """The main bolus's input (blood concentration at ``t_s``) from the pre-bolus curve ``pre``.

    Returns the curve and the shift (s) that aligned it with the main bolus.
    """
    guess = arrival_s(t_s, main, main_baseline) - arrival_s(t_pre_s, pre, pre_baseline)
    shift = _foot_shift(t_s, main, main_baseline, t_pre_s, dose_ratio * pre, guess)
    source_t = t_s - shift
    scaled = dose_ratio * np.interp(source_t, t_pre_s, pre, left=0.0)
    covered = source_t <= t_pre_s[-1]
    return np.where(covered, scaled, main), float(shift)
