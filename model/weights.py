"""Weight files at local paths or fsspec URIs: safetensors (written atomically, see model/io.py) and the
`.pth`/`.ckpt` pickles published models come as (read with `weights_only`)."""

from __future__ import annotations

import io

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from model.io import read_bytes, write_bytes_atomic


def read_safetensors(uri: str) -> dict[str, torch.Tensor]:
    return load_safetensors_bytes(read_bytes(uri))


def read_torch_checkpoint(uri: str) -> dict:
    """A `torch.save`d checkpoint, on the CPU, never executing pickled code."""
    return torch.load(io.BytesIO(read_bytes(uri)), map_location="cpu", weights_only=True)


def write_safetensors(uri: str, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_bytes_atomic(uri, save_safetensors_bytes(tensors))
