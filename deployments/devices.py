"""Where a replica computes: the configured device, else the GPU Ray gave it, else the CPU."""

from __future__ import annotations

import torch


def pick_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
