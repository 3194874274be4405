"""Per-pixel quality flags of a T2 fit (bit mask, uint8)."""

from __future__ import annotations

import enum


class Flag(enum.IntFlag):
    NOT_CONVERGED = 1  # the optimiser did not meet its tolerance
    OUTSIDE_CONSISTENCY_SET = 2  # the estimate is not in the profile-chi2 set C_alpha (or the set is empty)
    LOW_SIGNAL = 4  # last echo below the Gaussian-approximation limit (Rician regime)
    T2_OUT_OF_RANGE = 8  # estimate outside [5, 400] ms
    NO_ESTIMATE = 16  # outside the mask / background: no estimate, map value 0
    UNBOUNDED = 32  # C_alpha open above: no finite upper bound at this confidence


# Flags that exclude a pixel from region statistics.
EXCLUDE = Flag.NO_ESTIMATE | Flag.LOW_SIGNAL | Flag.UNBOUNDED | Flag.T2_OUT_OF_RANGE | Flag.NOT_CONVERGED
