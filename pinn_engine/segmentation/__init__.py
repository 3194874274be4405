"""Myocardium segmentation: synthetic training data, compact U-Net, heart localisation.

- ``Label``: the values of a label map (``labels``).
- ``Segmenter``, ``Segmentation``: the shipped network applied to a short-axis stack
  (``infer``); ``display_axes``: the anatomical display frame the network sees a slice
  plane in (``orientation``).
- Submodules: ``synth`` (synthetic data), ``network`` (the U-Net), ``train``, ``io``
  (NIfTI/DICOM files via SimpleITK), ``model_card``.

Importing the package loads ``labels`` alone: the other names load their modules (torch
for ``Segmenter``) when first used.
"""

from __future__ import annotations

import importlib

from pinn_engine.segmentation.labels import Label

_LAZY = {"Segmenter": "infer", "Segmentation": "infer", "display_axes": "orientation"}

__all__ = ["Label", "Segmentation", "Segmenter", "display_axes"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
