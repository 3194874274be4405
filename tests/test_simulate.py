from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom

from pinn_engine.aha import apex_normal
from pinn_engine.t2 import fit_t2


def test_simulate_t2_writes_a_realistic_series(tmp_path):
    out = tmp_path / "sim"
    proc = subprocess.run([sys.executable, "-m", "dicom_node", "simulate", "t2", "--out", str(out), "--seed", "5",
                           "--snr", "60", "--te", "0,35,55", "--slices", "3", "--matrix", "128"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 9
    ds = [pydicom.dcmread(f) for f in files]
    assert {d.SOPClassUID for d in ds} == {"1.2.840.10008.5.1.4.1.1.4"}
    assert len({d.SeriesInstanceUID for d in ds}) == 1 and len({d.FrameOfReferenceUID for d in ds}) == 1
    assert sorted({float(d.EchoTime) for d in ds}) == [0.0, 35.0, 55.0]
    iop = np.array(ds[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    assert abs(row @ col) < 1e-6 and abs(np.linalg.norm(row) - 1) < 1e-6
    normal = apex_normal(row, col)  # base -> apex, the order of the truth's slices
    positions = sorted({round(float(np.array(d.ImagePositionPatient, float) @ normal), 3) for d in ds})
    assert len(positions) == 3 and np.allclose(np.diff(positions), 10.0, atol=1e-3)
    assert ds[0].Rows == 128 and float(ds[0].PixelSpacing[0]) > 0 and ds[0].BodyPartExamined == "HEART"
    truth = np.load(out / "truth.npz")
    assert truth["t2_ms"].shape == (3, 128, 128) and set(np.unique(truth["labels"])) == {0, 1, 2, 3}
    # the pixels are the phantom: fitting them recovers the true myocardial T2
    images = np.zeros((3, 3, 128, 128))
    for d in ds:
        s = int(round((np.array(d.ImagePositionPatient, float) @ normal - positions[0]) / 10.0))
        e = [0.0, 35.0, 55.0].index(float(d.EchoTime))
        images[s, e] = d.pixel_array
    fit = fit_t2(images, [0, 35, 55])
    myo = (truth["labels"] == 2) & (truth["t2_ms"] == 45)
    assert abs(np.median(fit.t2_ms[myo]) - 45.0) < 1.0
    again = subprocess.run([sys.executable, "-m", "dicom_node", "simulate", "t2", "--out", str(tmp_path / "b"),
                            "--seed", "5", "--snr", "60", "--matrix", "128"], capture_output=True, text=True)
    assert again.returncode == 0
    assert pydicom.dcmread(sorted((tmp_path / "b").glob("*.dcm"))[0]).SOPInstanceUID == ds[0].SOPInstanceUID
