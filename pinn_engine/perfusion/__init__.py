"""Myocardial perfusion: two-compartment exchange model (2CXM), digital reference object, fitting.

- ``fit_2cxm`` fits tissue curves by one of ``PERFUSION_METHODS`` (``nlls``, ``pinn-2cxm``,
  ``pinn-reduced``, ``pinn-combined``) and returns the ``PARAMETERS`` (``fp``, ``vp``,
  ``ve``, ``ps``) with their SDs.
- ``quantify_perfusion`` (``quantify.quantify``, with ``PerfusionSettings``,
  ``PerfusionResult`` and ``aif_slice``): maps and AHA-segment values from registered
  dynamics and label maps; ``PreBolus``: a pre-bolus series for the arterial input;
  ``register_dynamics``: rigid motion correction of a dynamic series (SimpleITK);
  ``perfusion_phantom`` (``PerfusionPhantom``): the first-pass phantom.
- Submodules: ``models`` (2CXM forward models), ``nlls``, ``pinn`` (torch), ``dro`` (the
  digital reference object), ``phantom`` (first-pass phantom), ``prebolus``,
  ``registration``, ``quantify``; the methods and the reference object are described in
  docs/perfusion.md.

Importing the package loads the fitting code alone (numpy): the names from ``quantify`` and
``registration`` load their modules when first used.
"""

from __future__ import annotations

import importlib

from pinn_engine.perfusion.fit import PERFUSION_METHODS, fit_2cxm
from pinn_engine.perfusion.models import PARAMETERS
from pinn_engine.perfusion.prebolus import PreBolus

# name -> (module, name there); ``quantify`` is exported as ``quantify_perfusion`` because the
# package attribute ``quantify`` is its submodule
_LAZY = {"PerfusionResult": ("quantify", "PerfusionResult"), "PerfusionSettings": ("quantify", "PerfusionSettings"),
         "aif_slice": ("quantify", "aif_slice"), "quantify_perfusion": ("quantify", "quantify"),
         "register_dynamics": ("registration", "register_dynamics"),
         "PerfusionPhantom": ("phantom", "PerfusionPhantom"), "perfusion_phantom": ("phantom", "perfusion_phantom")}

__all__ = ["PARAMETERS", "PERFUSION_METHODS", "PerfusionPhantom", "PerfusionResult", "PerfusionSettings", "PreBolus",
           "aif_slice", "fit_2cxm", "perfusion_phantom", "quantify_perfusion", "register_dynamics"]


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
