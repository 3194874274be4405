"""T2 from T2-prepared multi-echo images: NLLS reference, PINN, rigorous error bounds."""

from pinn_engine.t2.fit import T2Fit, fit_t2, merge_fits
from pinn_engine.t2.flags import Flag
from pinn_engine.t2.regions import RegionStats, region_statistics

__all__ = ["Flag", "RegionStats", "T2Fit", "fit_t2", "merge_fits", "region_statistics"]
