"""Segmentation: network size, synthetic data, inference plumbing and the segment CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from pinn_engine.segmentation.infer import DEFAULT_WEIGHTS, Segmenter, to_three_channels
from pinn_engine.segmentation.network import UNet, count_parameters
from pinn_engine.segmentation.synth import GRID, make_sample, make_slice


def test_network_is_compact():
    assert count_parameters(UNet()) <= 2_000_000
    assert DEFAULT_WEIGHTS.exists() and DEFAULT_WEIGHTS.stat().st_size <= 8_000_000


def test_synthetic_samples_are_varied_labelled_and_reproducible():
    a = [make_sample(np.random.default_rng(11)) for _ in range(3)]
    b = make_sample(np.random.default_rng(11))
    np.testing.assert_array_equal(a[0].image, b.image)
    rng = np.random.default_rng(3)
    samples = [make_sample(rng) for _ in range(12)]
    assert {s.kind for s in samples} == {"full", "crop"}
    for s in samples:
        assert s.image.shape == (3, GRID, GRID) and s.labels.shape == (GRID, GRID)
        assert np.isfinite(s.image).all()
    assert sum((s.labels == 2).any() for s in samples) >= 10
    stack, labels, px = make_slice(np.random.default_rng(5))
    assert stack.shape[0] == 3 and labels.shape == stack.shape[1:] and 1.4 < px < 2.1


def test_channel_mapping_uses_all_echoes():
    x = np.arange(5)[None, :, None, None] * np.ones((2, 5, 4, 4))
    assert to_three_channels(x)[0, :, 0, 0].tolist() == [0, 2, 4]
    assert to_three_channels(x[:, :1])[0, :, 0, 0].tolist() == [0, 0, 0]


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter()


def test_segmenter_output_shape_and_flags(segmenter):
    stack, labels, px = make_slice(np.random.default_rng(8))
    seg = segmenter(np.stack([stack, stack]), (px, px))
    assert seg.labels.shape == (2,) + labels.shape and seg.labels.dtype == np.uint8
    assert set(np.unique(seg.labels)) <= {0, 1, 2, 3}
    assert seg.confidence.shape == (2,) and len(seg.flags) == 2
    blank = segmenter(np.zeros((1, 1, 96, 96)), (1.5, 1.5))
    assert blank.labels.max() == 0 and blank.flags[0]


def test_segment_cli_dicom_folder_and_nifti(tmp_path):
    sim = tmp_path / "sim"
    subprocess.run([sys.executable, "-m", "dicom_node", "simulate", "t2", "--out", str(sim), "--matrix", "128",
                    "--seed", "2"], check=True, capture_output=True)
    out = tmp_path / "labels.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "pinn_engine", "segment", str(sim), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lab = sitk.ReadImage(str(out))
    assert lab.GetSize() == (128, 128, 3)
    from pinn_engine.segmentation.io import read_stack

    stack = read_stack(sim)
    assert stack.images.shape == (3, 3, 128, 128)
    ref = stack.reference
    assert np.allclose(lab.GetOrigin(), ref.GetOrigin()) and np.allclose(lab.GetDirection(), ref.GetDirection())
    # the same stack as NIfTI (3-D: first echo only)
    nii = tmp_path / "t2.nii.gz"
    sitk.WriteImage(ref, str(nii))
    out2 = tmp_path / "labels2.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "pinn_engine", "segment", str(nii), "--out", str(out2)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sitk.ReadImage(str(out2)).GetSize() == (128, 128, 3)
