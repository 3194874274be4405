"""Numerics of the node: models, fitting, error bounds, segmentation, AHA segments.

Pure numerics (numpy, torch, scipy): arrays and dataclasses in and out; never imports
pydicom or dicom_node.
"""

__version__ = "0.1.0"
