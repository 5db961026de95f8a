"""Host helpers shared by the challenge's image ops (pixel_shuffle, upsample, pooling): the output
memory format ATen picks, and the batch of images their bench cases time."""
from __future__ import annotations

import torch


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """Channels-last for a 4-D channels-last input (ATen's suggest_memory_format), else contiguous."""
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def bench_images(rows: int, channels: int, side: int | None, dtype: torch.dtype, device: str,
                 cuda_side: int = 64) -> torch.Tensor:
    """rows // 256 images (at least one) of channels x side x side; side defaults to cuda_side on a GPU
    and to 8 under the CPU interpreter. Bench rows map to images so that rows=4096 is 16 images."""
    side = side or (cuda_side if device.startswith("cuda") else 8)
    return torch.randn(max(rows // 256, 1), channels, side, side, device=device).to(dtype)
