"""Writes MODEL_CARD.md next to the shipped weights from their metadata and a benchmark log."""

from __future__ import annotations

import sys
from pathlib import Path

TEMPLATE = """# Model card: short-axis segmentation network `{name}`

- **Task**: per-slice segmentation of cardiac short-axis MR into background, LV blood pool
  (papillary muscles included), LV myocardium, RV blood pool (RV free wall = background).
- **Architecture**: 2-D U-Net, 4 poolings, 16-256 channels, BatchNorm, {parameters:,} parameters,
  weights fp16 ({size_mb:.1f} MB). Input: 3 channels (the echoes of a T2-prep series — first,
  middle, last — or one image repeated), normalised by the 99th percentile; 128x128 grid.
  Inference: whole field of view (heart localisation), then a 150-220 mm window around the
  heart common to the stack at {scales_text} times its size, the windows' probabilities
  mapped back to the image grid and averaged.{frame_text}
- **Training data**: synthetic only (`pinn_engine.segmentation.synth`, built on the numerical
  phantom): random anatomy, contrasts (T2-prep multi-echo bright/black blood, single T2-weighted,
  fat-suppressed, perfusion-like), slow-flow signal, distractors, texture, coil shading, Gibbs,
  Rician noise, masked backgrounds, whole-FOV and heart-crop samples, {orientation_text}, gamma and
  intensity augmentation. **No real image was used for training.**
- **Training command**: `pinn-engine train-seg --out {path} --seed {seed} --samples {samples} --batch {batch} \
--steps {steps} --minutes 120 --generator {generator}`
  ({steps} steps, {epochs} epochs, {train_minutes} min wall time on the 2-core CPU ({device}); the shipped
  run used a time budget; with the step count above the run repeats from the seed with the same
  data and batches, its learning-rate schedule following steps instead of the clock (equivalent
  weights, not bit-identical); generator {generator}: {generator_text}).
- **Validation** (`.venv/bin/python benchmarks/segmentation.py`):

```
{benchmark}
```
{notes}
- **Limitations**: trained on a schematic torso. On real black-blood T2-weighted images at full
  field of view (MyoPS) the figures above are below what real-data models reach (LV ~0.88-0.95,
  myocardium ~0.80-0.89, RV ~0.80-0.90): the RV outline is unreliable in about a quarter of
  the cases (drawn too small where its dark free-wall side blends into lung and fat, or spilling
  over the free wall into the chest wall and mediastinum above it), the LV blood pool is drawn a
  little small where bright trabeculae or slow flow fill it, and at the ends of a stack the
  network can take another round structure (stomach, aorta) for the heart; that slice keeps
  the ring on the stack's LV axis where the network found one and is flagged where it found none
  (its LV lies far from the rest of the stack), as is any low-confidence or missing structure,
  never silently used. Images without a geometry are segmented as stored, where the
  network is less certain of the RV's side. Research use only.
"""


GENERATOR_TEXT = {
    1: "ellipse RV",
    2: "crescent RV, endocardial trabeculae, dark distractors",
    3: "generator 2's anatomy in the anatomical display frame",
    4: "generator 3 with black-blood RV trabeculae and flow-artefact streaks, a wider and deeper RV crescent",
    5: "generator 4 with slow flow filling much or all of a black-blood cavity, and a thick, irregular "
       "epicardial/mediastinal fat pad over the RV free wall, dark with grey vessels and septa where fat is "
       "suppressed (fat suppression in 60 % of black-blood samples)",
    6: "generator 4 with slow flow filling much or all of a black-blood cavity, and a thinner epicardial/"
       "mediastinal fat pad over the RV free wall in 35 % of samples, suppressed (in 50 % of black-blood "
       "samples) to a dark grey mostly above black blood, with faint septa in 40 % of those",
    7: "generator 6 with slow flow in half the black-blood LV cavities (generator 6: 30 %), often filling "
       "the whole cavity almost evenly",
    8: "generator 7 with blood pools beside the ventricles that are not labelled: the descending aorta by the "
       "spine on any slice and, on basal slices, the left and right atria and the pulmonary trunk, each with "
       "blood's contrast",
}
DISPLAY_FRAME_TEXT = ("85 % of samples in the anatomical display frame (turned by N(0, 12 deg), the heart within "
                      "45 deg, RV centre 95-155 deg from the image right) and 15 % at any rotation or mirroring")
FRAME_TEXT = (" All windows are sampled in the anatomical\n  display frame computed from the slice "
              "orientation (`orientation.py`: anterior up, seen from\n  the apex), whatever rotation or "
              "mirroring the images are stored with.")


def write(weights: Path, benchmark_log: Path, notes: Path | None = None) -> Path:
    """``notes``: optional Markdown appended after the validation block (history, comparisons)."""
    import torch

    from pinn_engine.segmentation.infer import SCALES

    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        meta = torch.load(weights, map_location="cpu", weights_only=True)["meta"]
    meta = {"generator": 1, "device": "cpu", **meta}  # seg_v1 predates both fields
    g = meta["generator"]
    text = TEMPLATE.format(
        name=weights.name, path=weights.as_posix(), size_mb=weights.stat().st_size / 1e6,
        benchmark=benchmark_log.read_text().strip(), generator_text=GENERATOR_TEXT[g],
        orientation_text=DISPLAY_FRAME_TEXT if g >= 3 else "rotations/flips",
        frame_text=FRAME_TEXT if g >= 3 else "",
        scales_text=", ".join(f"{x:g}" for x in SCALES[:-1]) + f" and {SCALES[-1]:g}" if len(SCALES) > 1 else "1",
        notes="\n" + notes.read_text().strip() + "\n" if notes else "", **meta,
    )
    out = weights.with_name("MODEL_CARD.md")
    out.write_text(text)
    return out


if __name__ == "__main__":
    print(write(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None))
