"""Builds a simulated T2 series and every derived object from its truth (shared by tests)."""

from __future__ import annotations

import numpy as np

from dicom_node.encode.common import Algorithm
from dicom_node.encode.parametric_map import encode_parametric_map, t2_bound_spec, t2_map_spec
from dicom_node.encode.segmentation import encode_segmentation
from pinn_engine.aha import SliceGeometry, assign_aha

ALG = Algorithm("pinn-t2", parameters={"method": "nlls", "confidence": 0.95})


def report_inputs(series, tmp_path):
    from dicom_node.encode.parametric_map import T2_CODE, T2_UNIT
    from dicom_node.encode.report import RegionResult, ReportContext

    first, truth = series
    labels, t2 = truth["labels"], truth["t2_ms"].astype(np.float64)
    geom = [SliceGeometry(np.array(d.ImageOrientationPatient[:3], float),
                          np.array(d.ImageOrientationPatient[3:], float),
                          tuple(map(float, d.PixelSpacing)), np.array(d.ImagePositionPatient, float)) for d in first]
    aha = assign_aha(labels, geom)
    pm = encode_parametric_map(first, t2, t2_map_spec(), ALG, 900)
    seg, tracking = encode_segmentation(first, labels, aha.labels, ALG, 901)
    px = float(first[0].PixelSpacing[0]) * float(first[0].PixelSpacing[1])
    regions = []
    for seg_no, mask in [(None, labels == 2)] + [(k, aha.labels == k) for k in aha.segments_present()]:
        v = t2[mask]
        frames = tuple(int(i) + 1 for i in np.nonzero(mask.any(axis=(1, 2)))[0])
        regions.append(RegionResult(seg_no, float(v.mean()), float(v.std()), 0.5, int(mask.sum()),
                                    float(mask.sum() * px), frames, ("test flag",) if seg_no is None else ()))
    ctx = ReportContext(T2_CODE, T2_UNIT, 0.95, {"confidence": 0.95, "noise_sigma": 12.5})
    return first, pm, seg, tracking, regions, ctx


def all_objects(series, tmp_path):
    from dicom_node.encode.display import Picture, draw, encode_pdf, encode_secondary_capture, raster_pdf
    from dicom_node.encode.report import encode_report

    first, pm, seg, tracking, regions, ctx = report_inputs(series, tmp_path)
    bound = encode_parametric_map(first, np.full(series[1]["t2_ms"].shape, 2.5), t2_bound_spec(0.95), ALG, 903)
    sr = encode_report(first, seg, tracking, pm, regions, ctx, ALG, 902)
    anatomy = np.stack([d.pixel_array for d in first]).astype(float)
    labels = series[1]["labels"]
    picture = Picture(anatomy, series[1]["t2_ms"], labels == 2, "T2", "ms", (30.0, 80.0), regions,
                      "pinn-t2 test", 0.95)
    rgb = draw(picture)[0]  # the node's own drawing path
    sc = encode_secondary_capture(rgb, first[0], ALG, "T2", 905)
    pdf = encode_pdf(raster_pdf(rgb), first[0], ALG, "T2", 906, "T2 mapping report")
    return first, {"pm": pm, "bound": bound, "seg": seg, "sr": sr, "sc": sc, "pdf": pdf}


