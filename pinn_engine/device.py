"""Compute device selection: CPU by default, a GPU when one is present."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
