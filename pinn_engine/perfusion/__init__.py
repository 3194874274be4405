"""Myocardial perfusion: two-compartment exchange model (2CXM), digital reference object, fitting."""

from pinn_engine.perfusion.fit import METHODS, fit_2cxm

__all__ = ["METHODS", "fit_2cxm"]
