"""DICOM encoding of the engine's results (highdicom): Parametric Maps, SEG, SR, display copies.

- ``common``: deterministic UIDs of derived objects (``derived_uid``), the algorithm's
  identity (``Algorithm``), patient/study copies, encoding helpers;
- ``parametric_map``: float Parametric Maps of any quantity (``MapSpec``: T2, its bound,
  MBF and the other 2CXM parameters) and references to them;
- ``background``: the single-frame MR series the maps and SEG reference (one image per
  slice position, on the maps' grid);
- ``segmentation``: the binary SEG (LV myocardium, blood pools, AHA segments);
- ``report``: the TID 1500 Comprehensive SR with per-segment values and bounds;
- ``display``: the colour Secondary Capture and the PDF (``Picture``, ``draw``).

Names are imported on first use (PEP 562): ``display`` imports matplotlib and the others
highdicom, which a process that never encodes does not need.
"""

from __future__ import annotations

from dicom_node.lazy_exports import lazy_exports

_EXPORTS = {
    "Algorithm": "common", "DERIVED_SUFFIX": "common", "dataset_bytes": "common", "dataset_from_bytes": "common",
    "derived_uid": "common", "header_only": "common", "UID_ROOT": "common",
    "MapSpec": "parametric_map", "encode_parametric_map": "parametric_map",
    "parametric_map_reference": "parametric_map", "t2_map_spec": "parametric_map", "t2_bound_spec": "parametric_map",
    "mbf_map_spec": "parametric_map", "kinetic_map_spec": "parametric_map", "T2_CODE": "parametric_map",
    "T2_UNIT": "parametric_map", "MBF_CODE": "parametric_map", "MBF_UNIT": "parametric_map",
    "VP_CODE": "parametric_map", "VE_CODE": "parametric_map", "PS_CODE": "parametric_map",
    "FRACTION": "parametric_map", "FLOW_PER_ML": "parametric_map",
    "encode_background_series": "background", "background_series_uid": "background",
    "encode_segmentation": "segmentation", "segmentation_reference": "segmentation",
    "RegionResult": "report", "ReportContext": "report", "encode_report": "report",
    "Picture": "display", "draw": "display", "encode_pdf": "display", "encode_secondary_capture": "display",
    "raster_pdf": "display", "png": "display",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
