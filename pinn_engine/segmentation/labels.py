"""The values of a segmentation label map, defined once for the engine and the node.

A label map holds one value per pixel: the segmentation network's classes, the phantom's
ground truth, the input of the AHA segmentation and of perfusion quantification. The LV
blood pool includes the papillary muscles; the RV free wall is background (only the LV
myocardium is labelled). Numpy compares and assigns the members as the integers they are.

This module imports nothing heavy (no torch), so that it can be used from anywhere.
"""

from __future__ import annotations

import enum


class Label(enum.IntEnum):
    BACKGROUND = 0
    LV_BLOOD_POOL = 1  # papillary muscles included
    MYOCARDIUM = 2  # LV myocardium
    RV_BLOOD_POOL = 3
