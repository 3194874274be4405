"""Numerics of the node: models, fitting, error bounds, segmentation, AHA segments.

Pure numerics (numpy, torch, scipy): arrays and dataclasses in and out; never imports
pydicom or dicom_node. Importing a package loads no torch; torch loads with the code that
needs it (PINNs, the segmentation network).

- ``pinn_engine.t2``: T2 maps with per-pixel and per-region error bounds.
- ``pinn_engine.perfusion``: 2CXM perfusion fitting and quantification.
- ``pinn_engine.segmentation``: label values (``Label``) and the short-axis segmentation network.
- ``pinn_engine.aha``: AHA 16/17-segment assignment (docs/aha-segments.md).
- ``pinn_engine.phantom``: numerical cardiac phantom (anatomy, T2-prepared images, labels).
- ``pinn_engine.device``: compute device selection; ``pinn_engine.cli``: the ``pinn-engine`` command.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
