"""T2 from T2-prepared multi-echo images: NLLS reference, PINN, rigorous error bounds.

- ``fit_t2`` (``T2_METHODS``: ``nlls``, ``pinn``) maps a stack to a ``T2Fit``: T2, M0,
  per-pixel bounds and ``Flag`` bits; ``merge_fits`` joins fits of parts of one image.
- ``region_statistics``: a region's mean T2, spread and bound on the mean (``RegionStats``),
  leaving out the pixels whose flags are in ``EXCLUDE``: the bound noise gives for a set of pixels.
- ``segment_statistics``: the AHA segments' and the whole myocardium's values as the report
  gives them: the myocardial core without outliers, bounds that also cover the segmentation
  (``SegmentValue``; ``BOUND_COVERS`` names the error sources; docs/segment-values.md).
- Submodules: ``model`` (signal model, Cramer-Rao bound), ``nlls``, ``pinn`` (torch, loaded
  only for ``method="pinn"``), ``bounds``, ``noise``; the theory is in docs/t2-error-bounds.md.
"""

from pinn_engine.t2.fit import T2_METHODS, T2Fit, fit_t2, merge_fits
from pinn_engine.t2.flags import EXCLUDE, Flag
from pinn_engine.t2.regions import RegionStats, region_statistics
from pinn_engine.t2.segments import COVERS as BOUND_COVERS
from pinn_engine.t2.segments import SegmentValue, segment_statistics

__all__ = ["EXCLUDE", "Flag", "RegionStats", "T2Fit", "T2_METHODS", "fit_t2", "merge_fits", "region_statistics",
           "SegmentValue", "segment_statistics", "BOUND_COVERS"]
