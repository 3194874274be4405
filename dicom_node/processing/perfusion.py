"""The perfusion job: dynamics -> motion correction -> segmentation -> AIF, 2CXM fit -> AHA -> objects.

Run through ``Processor.process`` by the node's job worker and by ``dicom-node process``. Steps are timed and logged;
a series the engine cannot process raises SeriesError with the reason (the job records it).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from dicom_node import __version__
from dicom_node.encode import (
    FLOW_PER_ML,
    FRACTION,
    MBF_CODE,
    MBF_UNIT,
    PS_CODE,
    VE_CODE,
    VP_CODE,
    Algorithm,
    Picture,
    RegionResult,
    ReportContext,
    encode_parametric_map,
    encode_segmentation,
    kinetic_map_spec,
    mbf_map_spec,
    parametric_map_reference,
    segmentation_reference,
)
from dicom_node.processing.classification import slice_key
from dicom_node.processing.kinds import SeriesKind
from dicom_node.processing.load import PerfusionSeries, SeriesError
from dicom_node.processing.prebolus import PreBolusSeries
from dicom_node.processing.step_processes import IN_CALLER, StepProcesses
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
from pinn_engine.perfusion import PerfusionSettings, PreBolus, aif_slice, quantify_perfusion, register_dynamics
from pinn_engine.segment_variants import DESCRIPTIONS as VARIANT_DESCRIPTIONS
from pinn_engine.segmentation import Label

SERIES_NUMBERS = {"background": 9200, "mbf": 9201, "vp": 9202, "ve": 9203, "ps": 9204, "seg": 9205, "sr": 9206,
                  "sc": 9207, "pdf": 9208}
Z95 = 1.959964  # the reported +/- is the 95 % interval of the fit (delta method)


def _aligned_prebolus(pre: PreBolusSeries, series: PerfusionSeries, registered: np.ndarray,
                      labels: np.ndarray) -> tuple[PreBolus | None, str]:
    """The pre-bolus dynamics at the AIF slice's position, registered to that slice, or why not."""
    k = aif_slice(labels)
    position = slice_key(series.sources[k])
    tolerance = 0.5 * float(series.sources[k].get("SliceThickness", 4.0) or 4.0)
    keys = [slice_key(d) for d in pre.series.sources]
    match = [j for j, key in enumerate(keys) if key is not None and position is not None
             and abs(key - position) <= tolerance]
    if not match:
        return None, f"the pre-bolus series has no slice at the AIF slice's position ({position} mm)"
    j = min(match, key=lambda i: abs(keys[i] - position))
    frames = pre.series.images[j]
    if frames.shape[1:] != registered.shape[2:] or not np.allclose(pre.series.pixel_spacing_mm,
                                                                   series.pixel_spacing_mm, rtol=1e-3):
        return None, "the pre-bolus series has another matrix or pixel spacing"
    if not np.allclose(np.asarray(pre.series.sources[j].ImageOrientationPatient, float),
                       np.asarray(series.sources[k].ImageOrientationPatient, float), atol=1e-3):
        return None, "the pre-bolus series has another slice orientation"
    # every pre-bolus frame to the main slice's reference frame (peak total signal), with
    # the same rigid mutual-information registration the main frames had: it tolerates the
    # lower enhancement, and the breath-hold of the pre-bolus differs from the main one
    reference = registered[k][int(np.argmax(registered[k].reshape(registered.shape[1], -1).sum(1)))]
    moved, _ = register_dynamics(np.concatenate([reference[None], frames]), series.pixel_spacing_mm, reference=0,
                                 roi=_heart_roi(labels[k], 15))
    try:
        return PreBolus(moved[1:], pre.series.t_min[j], pre.dose_ratio, pre.series.saturation_delay_ms), ""
    except ValueError as exc:
        return None, str(exc)


def _heart_roi(labels: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    r, c = np.nonzero(labels != Label.BACKGROUND)
    h, w = labels.shape
    return max(int(r.min()) - margin, 0), min(int(r.max()) + margin + 1, h), max(int(c.min()) - margin, 0), min(
        int(c.max()) + margin + 1, w)


def process_perfusion(series: PerfusionSeries, settings: PerfusionSettings | None = None, segmenter=None,
                      progress: Callable[[str], None] | None = None, deliver: Deliver | None = None,
                      prebolus: PreBolusSeries | None = None, helpers: StepProcesses = IN_CALLER) -> Outcome:
    """Run the whole perfusion chain on a loaded series (``deliver``: as for ``process_t2``).

    ``prebolus``: a pre-bolus series of the same study; the arterial input comes from it
    when it covers the AIF slice (otherwise the job says why in its flags).
    """
    timed = Steps(series.subject_uid, progress)
    timings = timed.timings
    settings = settings if settings is not None else PerfusionSettings()

    if segmenter is None:
        from pinn_engine.segmentation import Segmenter  # noqa: PLC0415

        segmenter = timed("load_model", Segmenter)
    images = series.images
    spacing = series.pixel_spacing_mm

    def segment(stack: np.ndarray):
        # the temporal maximum shows blood pools and myocardium at their brightest
        return segmenter(stack.max(1)[:, None], spacing, orientation=series.geometry[0].orientation)

    first = timed("segment", segment, images)
    if not (first.labels == Label.MYOCARDIUM).any():
        raise SeriesError("no myocardium found in any slice: nothing to quantify")

    def register() -> tuple[np.ndarray, float]:
        out, worst = np.empty_like(images), 0.0
        for k in range(images.shape[0]):
            if not (first.labels[k] > 0).any():
                out[k] = images[k]
                continue
            out[k], params = register_dynamics(images[k], spacing, roi=_heart_roi(first.labels[k], 15))
            worst = max(worst, float(np.abs(params[:, 1:]).max()))
        return out, worst

    registered, worst_shift = timed("register", register)
    seg = timed("segment_registered", segment, registered)
    labels = seg.labels
    aha = timed("aha", assign_aha, labels, series.geometry)
    pre, pre_problem = timed("prebolus", _aligned_prebolus, prebolus, series, registered, labels) if prebolus else (
        None, "")
    try:
        result = timed("fit", quantify_perfusion, registered, series.t_min, labels, aha.labels, settings,
                       series.saturation_delay_ms, pre, series.geometry)
    except ValueError as exc:
        raise SeriesError(str(exc)) from exc
    if not result.segments:
        raise SeriesError("no AHA segment could be measured (no insertion points)")

    myo = labels == Label.MYOCARDIUM
    px_area = spacing[0] * spacing[1]
    flags = [f"slice {k + 1}: {f}" for k, s in enumerate(aha.slices) for f in s.flags]
    flags += [f"slice {k + 1}: {f}" for k, fl in enumerate(seg.flags) for f in fl] + list(result.flags)
    if pre_problem:
        flags.append(f"pre-bolus series {prebolus.series.sources[0].SeriesInstanceUID} not used: {pre_problem}")
    mbf = result.maps["mbf"]
    finite = mbf[myo & np.isfinite(mbf)]
    if finite.size and float(np.median(finite)) > 6.0:
        flags.append(f"median MBF {float(np.median(finite)):.1f} ml/min/g is implausibly high (AIF saturation or "
                     "timing?): do not use without review")
    if worst_shift > 10.0:
        flags.append(f"motion correction moved a frame by {worst_shift:.1f} mm: check registration")
    regions, summary_segments = [], []
    mbf = result.maps["mbf"]
    for number in [None, *sorted(result.segments)]:
        mask = (myo & np.isfinite(mbf)) if number is None else (aha.labels == number) & np.isfinite(mbf)
        values = mbf[mask]
        frames = tuple(int(k) + 1 for k in np.nonzero(mask.any(axis=(1, 2)))[0])
        if number is None:
            mean, sd_fit = float(np.mean(values)), float(np.std(values) / max(np.sqrt(values.size), 1))
            # the segments' dependence on the segmentation, weighted by their areas
            weights = {k: e["n_pixels"] for k, e in result.segments.items()}
            segmentation = sum(w * result.segments[k]["mbf_segmentation"] for k, w in weights.items()) / max(
                sum(weights.values()), 1)
            others = ()
            entry = None
        else:
            e = result.segments[number]
            mean, sd_fit, segmentation = e["mbf"], e["mbf_sd"], e["mbf_segmentation"]
            # each +/-: the fit's 95 % interval plus what the segmentation changes (segment_variants)
            others = tuple((code, unit, e[p], Z95 * e[f"{p}_sd"] + e[f"{p}_segmentation"])
                           for p, code, unit in (("vp", VP_CODE, FRACTION), ("ve", VE_CODE, FRACTION),
                                                 ("ps", PS_CODE, FLOW_PER_ML)))
            entry = {"aha": number, "mbf_ml_min_g": round(mean, 4),
                     "mbf_bound_ml_min_g": round(Z95 * sd_fit + segmentation, 4),
                     "mbf_bound_parts_ml_min_g": {"fit": round(Z95 * sd_fit, 4),
                                                  "segmentation": round(segmentation, 4)},
                     **{k: round(e[k], 4) for k in ("fp", "vp", "ve", "ps", "fp_sd", "vp_sd", "ve_sd", "ps_sd")},
                     **{f"{p}_segmentation": round(e[f"{p}_segmentation"], 4) for p in ("fp", "vp", "ve", "ps")},
                     "n_pixels": e["n_pixels"]}
            summary_segments.append(entry)
        regions.append(RegionResult(number, mean, float(np.std(values)), Z95 * sd_fit + segmentation,
                                    int(values.size), values.size * px_area, frames,
                                    tuple(flags) if number is None else (), others))
    global_entry = {"mbf_ml_min_g": round(regions[0].mean, 4), "mbf_sd_ml_min_g": round(regions[0].sd, 4),
                    "n_pixels": regions[0].n_pixels}

    params = {"method": settings.method, "model": settings.model, "hct": settings.hct,
              "density_g_ml": settings.density_g_ml, "t1_blood_ms": settings.t1_blood_ms,
              "t1_myocardium_ms": settings.t1_myocardium_ms, "relaxivity": settings.relaxivity,
              "saturation_delay_ms": series.saturation_delay_ms or settings.saturation_delay_ms,
              "baseline_frames": result.baseline_frames, "aif_slice": result.aif_slice + 1,
              "aif_source": result.aif_source,
              "aha_convention": aha.convention,
              "bound": "95% interval of the fit + the change on the segmentation's variants",
              "bound_covers": "; ".join(("fit (95%)", *VARIANT_DESCRIPTIONS.values()))}
    algorithm = Algorithm("pinn-node-perfusion", __version__, {"method": settings.method, "model": settings.model,
                                                               "hct": settings.hct})
    objects: dict[str, Dataset] = {}
    # maps, SEG and SR reference the background series: each slice's peak enhancement
    sources = add_background(objects, series.sources, registered.max(1), series.subject_uid,
                             SERIES_NUMBERS["background"], "Perfusion peak background (PINN node)",
                             "the peak enhancement (maximum over the registered dynamics) of each slice position")
    heart = ndimage.binary_dilation(labels != Label.BACKGROUND, iterations=2)
    picture = Picture(registered.max(1), np.nan_to_num(mbf), myo & np.isfinite(mbf) & heart, "MBF", "ml/min/g",
                      (0.0, 4.0), regions, f"pinn-node-perfusion {__version__} ({settings.method}, 2CXM "
                      f"{settings.model}); Hct {settings.hct:g}. Each ± bound covers the fit (95%), "
                      f"{', '.join(VARIANT_DESCRIPTIONS.values())}", 0.95)
    # the report first (the slowest object to build), from the identities of what it references
    seg_ref, tracking = segmentation_reference(sources, aha.labels, algorithm)
    report = submit_report(helpers, sources, seg_ref, tracking,
                           parametric_map_reference(sources, mbf_map_spec(), algorithm), regions,
                           ReportContext(MBF_CODE, MBF_UNIT, 0.95, params), algorithm, SERIES_NUMBERS["sr"],
                           evidence=unique_instances(series.datasets), timings=timings)

    def encode() -> None:
        objects["mbf"] = encode_parametric_map(sources, np.nan_to_num(mbf), mbf_map_spec(), algorithm,
                                               SERIES_NUMBERS["mbf"])
        for name in ("vp", "ve", "ps"):
            objects[name] = encode_parametric_map(sources, np.nan_to_num(result.maps[name]), kinetic_map_spec(name),
                                                  algorithm, SERIES_NUMBERS[name])
        objects["seg"], _ = encode_segmentation(sources, labels, aha.labels, algorithm, SERIES_NUMBERS["seg"])

    copies = DisplayCopies("MBF", SERIES_NUMBERS["sc"], SERIES_NUMBERS["pdf"],
                           "Myocardial perfusion report (research use)", "mbf_display.png")
    pictures = encode_and_deliver(helpers, timed, objects, encode, picture, report, sources[0], algorithm, copies,
                                  deliver)
    summary = {
        "kind": SeriesKind.PERFUSION,
        "segments": summary_segments,
        "global": global_entry,
        "method": settings.method,
        "model": settings.model,
        "parameters": params,
        "aif_plasma_mM": [round(float(v), 4) for v in result.aif_plasma_mM],
        "aif_source": result.aif_source,
        "prebolus": None if prebolus is None else {
            "series_instance_uid": str(prebolus.series.sources[0].SeriesInstanceUID),
            "dose_ratio": prebolus.dose_ratio, "dose_source": prebolus.dose_source, "used": pre is not None},
        "flags": flags,
        "timings_s": timings,
        "derived": {k: {"sop_instance_uid": str(v.SOPInstanceUID), "series_instance_uid": str(v.SeriesInstanceUID)}
                    for k, v in objects.items()},
    }
    return Outcome(objects, summary, pictures)
