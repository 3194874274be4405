"""The T2 job: series -> segmentation -> T2 fit with bounds -> AHA statistics -> derived objects.

Run through ``Processor.process`` by the node's job worker and by ``dicom-node process``. Each step is timed and
logged; a series the engine cannot process raises with the reason (the job records it).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from dicom_node import __version__
from dicom_node.encode import (
    T2_CODE,
    T2_UNIT,
    Algorithm,
    Picture,
    RegionResult,
    ReportContext,
    encode_parametric_map,
    encode_segmentation,
    parametric_map_reference,
    segmentation_reference,
    t2_bound_spec,
    t2_map_spec,
)
from dicom_node.processing.kinds import SeriesKind
from dicom_node.processing.load import SeriesError, T2Series
from dicom_node.processing.step_processes import FIT_AND_DRAW, IN_CALLER, StepProcesses
from dicom_node.processing.steps import (
    Deliver,
    DisplayCopies,
    Outcome,
    Steps,
    add_background,
    encode_and_deliver,
    submit_report,
    unique_instances,
)
from pinn_engine.aha import assign_aha
from pinn_engine.segmentation import Label
from pinn_engine.t2 import BOUND_COVERS, EXCLUDE, Flag, fit_t2, merge_fits, segment_statistics

SERIES_NUMBERS = {"background": 9100, "pm": 9101, "bound": 9102, "seg": 9103, "sr": 9104, "sc": 9105, "pdf": 9106}


def process_t2(series: T2Series, method: str = "pinn", confidence: float = 0.95, segmenter=None,
               progress: Callable[[str], None] | None = None, deliver: Deliver | None = None,
               helpers: StepProcesses = IN_CALLER) -> Outcome:
    """Run the whole T2 chain on a loaded series.

    ``deliver``, if given, receives derived objects as soon as they exist (maps and SEG, then
    the display copies) while the report is still being built; the outcome lists all objects.
    ``helpers`` run the whole-image fit, the drawing and the SR beside this thread.
    """
    timed = Steps(series.subject_uid, progress)
    timings = timed.timings

    if segmenter is None:
        from pinn_engine.segmentation import Segmenter  # noqa: PLC0415

        segmenter = timed("load_model", Segmenter)
    # NLLS: the report and the picture need only the myocardium's values, and the report is
    # the slowest object to build; so a helper fits the whole image for the maps (numpy, off
    # the critical path) while this thread segments, then fits just the myocardium (~2k
    # pixels, the same values the whole fit gives them) and the report can start. The PINN
    # trains on the whole image with torch's threads, here.
    whole = None
    if method == "nlls":
        whole = helpers.submit(partial(fit_t2, method=method, confidence=confidence), series.images,
                               series.te_ms, lane=FIT_AND_DRAW)
    seg = timed("segment", segmenter, series.images, series.pixel_spacing_mm,
                threads=1 if whole is not None else None, orientation=series.geometry[0].orientation)
    labels = seg.labels
    myocardium = labels == Label.MYOCARDIUM
    if not myocardium.any():
        raise SeriesError("no myocardium found in any slice: nothing to quantify")
    # the myocardium and two pixels around it: the segment bounds try the border one pixel wider
    near = np.stack([ndimage.binary_dilation(m, iterations=2) for m in myocardium])
    fit = timed("fit", fit_t2, series.images, series.te_ms, method=method, confidence=confidence,
                within=near if whole is not None else None)
    aha = timed("aha", assign_aha, labels, series.geometry)
    usable = (fit.flags & int(EXCLUDE)) == 0
    measured = np.where(usable, aha.labels, 0).astype(np.uint8)
    if not measured.any():
        raise SeriesError("no AHA segment could be measured (no insertion points or all pixels flagged)")
    values = timed("segment_values", segment_statistics, fit, labels, series.geometry, aha.labels)

    px_area = series.pixel_spacing_mm[0] * series.pixel_spacing_mm[1]
    regions: list[RegionResult] = []
    summary_segments = []
    for st in sorted(values, key=lambda v: -1 if v.aha is None else v.aha):
        number = st.aha
        mask = measured > 0 if number is None else measured == number
        frames = tuple(int(k) + 1 for k in np.nonzero(mask.any(axis=(1, 2)))[0])
        flags = []
        if number is None:
            flags = list(series.notes)  # what the stack left out
            flags += [f"slice {k + 1}: {f}" for k, s in enumerate(aha.slices) for f in s.flags]
            flags += [f"slice {k + 1}: {f}" for k, fl in enumerate(seg.flags) for f in fl]
        regions.append(RegionResult(number, st.mean_ms, st.sd_ms, st.bound_ms, st.n_pixels,
                                    float(mask.sum()) * px_area, frames, tuple(flags)))
        entry = {"aha": number, "t2_ms": round(st.mean_ms, 3), "t2_bound_ms": round(st.bound_ms, 3),
                 "t2_sd_ms": round(st.sd_ms, 3), "n_pixels": st.n_pixels, "n_left_out": st.n_excluded,
                 "bound_parts_ms": {"noise": round(st.noise_ms, 3), "border_position": round(st.mask_ms, 3),
                                    "partial_volume": round(st.border_ms, 3),
                                    "insertion_point": round(st.sector_ms, 3)}}
        if number is not None:
            summary_segments.append(entry)
        else:
            global_entry = {k: v for k, v in entry.items() if k != "aha"}

    params = {"method": method, "confidence": confidence, "noise_sigma": round(fit.noise.sigma, 4),
              "noise_sigma_upper": round(fit.noise.sigma_upper, 4), "noise_method": fit.noise.method,
              "aha_convention": aha.convention, "preparation_times_ms": ",".join(f"{t:g}" for t in series.te_ms),
              "segment_value": "bias-corrected mean of the myocardial core, outliers excluded",
              "bound_covers": "; ".join(BOUND_COVERS)}
    algorithm = Algorithm("pinn-node-t2", __version__, {"method": method, "confidence": confidence})
    objects: dict[str, Dataset] = {}
    # maps, SEG and SR reference the background series (one image per position, the maps' grid)
    sources = add_background(objects, series.sources, series.images[:, 0], series.subject_uid,
                             SERIES_NUMBERS["background"], "T2 map background (PINN node)",
                             f"the shortest preparation time ({series.te_ms[0]:g} ms) of each slice position")

    anatomy = series.images[:, 0]
    heart = ndimage.binary_dilation(labels != Label.BACKGROUND, iterations=2)
    picture = Picture(anatomy, fit.t2_ms, myocardium & fit.estimated & heart, "T2", "ms", (30.0, 80.0), regions,
                      f"pinn-node-t2 {__version__} ({method}); sigma {fit.noise.sigma:.3g} ({fit.noise.method}). "
                      f"Segment values: myocardial core, outliers and fit bias removed; each ± bound "
                      f"({confidence * 100:g}%) covers {', '.join(BOUND_COVERS)}", confidence)
    # the report is the slowest object to build: it starts first, in a helper, from the
    # identities of the map and SEG it references; the picture is drawn in the other helper
    seg_ref, tracking = segmentation_reference(sources, measured, algorithm)
    report = submit_report(helpers, sources, seg_ref, tracking,
                           parametric_map_reference(sources, t2_map_spec(), algorithm), regions,
                           ReportContext(T2_CODE, T2_UNIT, confidence, params), algorithm,
                           SERIES_NUMBERS["sr"], evidence=unique_instances(series.datasets), timings=timings)

    full = fit  # the fit the maps show: the whole image's, once the helper has it

    def encode() -> None:
        nonlocal full
        # the myocardium from the job's own fit, so that maps, report and picture agree to the bit
        full = merge_fits([whole(), fit]) if whole is not None else fit
        objects["pm"] = encode_parametric_map(sources, full.t2_ms, t2_map_spec(), algorithm, SERIES_NUMBERS["pm"])
        bound = np.where(np.isfinite(full.bound_ms) & full.estimated, full.bound_ms, 0.0)
        objects["bound"] = encode_parametric_map(sources, bound, t2_bound_spec(confidence), algorithm,
                                                 SERIES_NUMBERS["bound"])
        objects["seg"], _ = encode_segmentation(sources, labels, measured, algorithm, SERIES_NUMBERS["seg"])

    copies = DisplayCopies("T2", SERIES_NUMBERS["sc"], SERIES_NUMBERS["pdf"], "T2 mapping report (research use)",
                           "t2_display.png")
    pictures = encode_and_deliver(helpers, timed, objects, encode, picture, report, sources[0], algorithm, copies,
                                  deliver)
    flag_counts = {f.name: int(((fit.flags & int(f)) > 0)[myocardium].sum()) for f in Flag if f != Flag.NO_ESTIMATE}
    summary = {
        "kind": SeriesKind.T2,
        "stack": {"uid": series.subject_uid, "source_series": series.series_uids, "notes": series.notes},
        "segments": summary_segments,
        "global": global_entry,
        "noise_sigma": round(fit.noise.sigma, 4),
        "noise_sigma_upper": round(fit.noise.sigma_upper, 4),
        "noise_method": fit.noise.method,
        "confidence": confidence,
        "method": method,
        "aha_convention": aha.convention,
        "flags": [f for r in regions for f in r.flags] + [f"{n} myocardial pixels flagged {k}"
                                                          for k, n in flag_counts.items() if n],
        "timings_s": {**timings, **{f"fit_{k}": round(v, 3) for k, v in full.timings_s.items()}},
        "derived": {k: {"sop_instance_uid": str(v.SOPInstanceUID), "series_instance_uid": str(v.SeriesInstanceUID)}
                    for k, v in objects.items()},
    }
    return Outcome(objects, summary, pictures)


def warm_up(segmenter, helpers: StepProcesses = IN_CALLER, method: str = "nlls") -> None:
    """Run the chain once on a small simulated series, results discarded.

    The first call of each encoder (highdicom's and pydicom's lazily built tables) and of
    the helper processes costs about as much as the rest of a job; a node in service pays
    it at start-up, not with the first series it receives.
    """
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from dicom_node.processing.load import load_t2_series  # noqa: PLC0415
    from dicom_node.simulate import simulate_t2  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="pinn-node-warm-up-") as tmp:
        simulate_t2(Path(tmp), seed=0, matrix=96, slices=2)
        process_t2(load_t2_series(sorted(Path(tmp).glob("*.dcm"))), method=method, segmenter=segmenter,
                   helpers=helpers)
