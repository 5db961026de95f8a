"""copy_channels / to_memory_format (conv_transpose2d's layout copies) against torch's copy: both directions,
batch slices, odd sizes, every dtype it moves bit for bit, and the fallback for layouts it does not walk."""
import pytest
import torch

from flagstack.ops.challenge.channels_copy import copy_channels, to_memory_format
from tests.ops.helpers import DEVICE

CL = torch.channels_last


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 70, 9, 9), (3, 1, 1, 130), (0, 4, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.bool])
def test_both_directions_exact(shape, dtype):
    x = (torch.randn(shape) * 100).to(dtype).to(DEVICE)
    to_cl = to_memory_format(x, CL)
    assert to_cl.is_contiguous(memory_format=CL) and torch.equal(to_cl, x)
    back = to_memory_format(to_cl, torch.contiguous_format)
    assert back.is_contiguous() and torch.equal(back, x)


def test_batch_slice_and_already_dense():
    x = torch.randn(4, 6, 3, 5, device=DEVICE)[1:3]  # a slice keeps its pixels flat
    out = torch.empty(x.shape, device=DEVICE, memory_format=CL)
    assert copy_channels(x, out) is out and torch.equal(out, x)
    assert to_memory_format(x, torch.contiguous_format) is x  # no copy where none is needed


def test_fallback_for_other_strides():
    x = torch.randn(2, 3, 8, 10, device=DEVICE)[:, :, ::2, 1::3]  # pixels not one axis: torch copies
    assert torch.equal(to_memory_format(x, CL), x)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        copy_channels(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 4, 3))
