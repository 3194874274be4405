"""The anatomical display frame the segmentation network sees every slice in.

A short-axis slice can be stored at any rotation, mirrored or not; its DICOM geometry says
which way the patient lies. The network is given each slice resampled into one frame,
derived from the slice plane alone: looking from the apex, image down is the patient's
posterior as projected onto the plane (anterior up), image right completes the frame. In
it the RV lies up and to the left of the LV (the patient's right-anterior direction projects
to 100-125 deg from the image right for usual short-axis tilts), the spine below and the
liver to the left, as in the synthetic training data (``synth``, generators 3 and later). Without a
geometry the image is taken as stored.
"""

from __future__ import annotations

import numpy as np

from pinn_engine.aha import ANTERIOR_LPS, toward_apex

SUPERIOR_LPS = np.array([0.0, 0.0, 1.0])


def display_axes(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, down) unit vectors in patient coordinates (LPS) of the display frame of a slice plane.

    ``normal``: the plane's normal, either sign (the apex side is chosen from the anatomy).
    """
    n = toward_apex(normal)
    up = ANTERIOR_LPS - (ANTERIOR_LPS @ n) * n
    if np.linalg.norm(up) < 0.2:  # a plane facing front or back (not a short axis): superior up instead
        up = SUPERIOR_LPS - (SUPERIOR_LPS @ n) * n
    down = -up / np.linalg.norm(up)
    right = np.cross(n, down)
    return right / np.linalg.norm(right), down


def display_matrix(row_cosine: np.ndarray, column_cosine: np.ndarray) -> np.ndarray:
    """2x2 orthogonal map from display-frame (down, right) mm offsets to image (row, column) mm offsets.

    ``row_cosine`` / ``column_cosine``: DICOM Image Orientation (Patient), the directions of
    increasing column index and of increasing row index. A mirrored image gives a reflection.
    """
    row = np.asarray(row_cosine, dtype=float)
    col = np.asarray(column_cosine, dtype=float)
    right, down = display_axes(np.cross(row, col))
    m = np.array([[down @ col, right @ col], [down @ row, right @ row]])
    u, _, vt = np.linalg.svd(m)  # the nearest orthogonal matrix: cosines are rounded in headers
    return u @ vt
