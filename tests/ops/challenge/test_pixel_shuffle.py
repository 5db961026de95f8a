"""pixel_shuffle: Triton kernel against F.pixel_shuffle, exact (factors, ranks, dtypes, layouts, out=).
test_pixel_unshuffle.py runs the same suite on the inverse op."""
import pytest
import torch
import torch.nn.functional as F

from flagstack.ops.challenge.pixel_shuffle import pixel_shuffle_reference, pixel_shuffle_triton
from flagstack.ops.registry import aten_overrides
from tests.ops.challenge.common import FLOAT_DTYPES, INT_DTYPES, check, covers, large_only_on_gpu, make, nonfinite, same_error
from tests.ops.helpers import DEVICE, ON_GPU

CASES = [  # batch dims, channels of the spatial side, height and width of the channel side, factor
    ((1,), 1, 1, 1, 2), ((), 2, 3, 3, 2), ((2,), 3, 5, 7, 3), ((2, 3), 2, 4, 6, 2), ((3,), 5, 4, 4, 1),
    ((2,), 4, 9, 33, 4), ((1, 1, 2), 1, 2, 3, 2),
]


class TestPixelShuffle:
    """Every test, written for a direction: subclasses swap ours/theirs/shape for pixel_unshuffle."""

    aten = "pixel_shuffle"
    error_cases = [((4, 4), 2), ((4,), 1), ((2, 8, 3, 3), 0), ((2, 8, 4, 4), -1), ((2, 8, 3, 3), 3)]

    def ours(self, x, r, **kw):
        return pixel_shuffle_triton(x, r, **kw)

    def theirs(self, x, r, **kw):
        return pixel_shuffle_reference(x, r, **kw)

    def shape(self, batch, c, h, w, r):
        """The input shape whose channel side is [*batch, c*r*r, h, w]."""
        return (*batch, c * r * r, h, w)

    @covers("small", "regular", "ranks", "params", "float_dtypes")
    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    @pytest.mark.parametrize("batch,c,h,w,r", CASES)
    def test_cases(self, batch, c, h, w, r, dtype):
        x = make(self.shape(batch, c, h, w, r), dtype)
        check(self.ours(x, r), self.theirs(x, r), exact=True)

    @covers("large")
    @large_only_on_gpu
    @pytest.mark.parametrize("batch,c,h,w,r", [((16,), 64, 64, 64, 2), ((4,), 8, 100, 130, 3)] if ON_GPU else [])
    def test_large(self, batch, c, h, w, r):
        x = make(self.shape(batch, c, h, w, r), torch.bfloat16)
        check(self.ours(x, r), self.theirs(x, r), exact=True)

    @covers("int_dtypes")
    @pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool])
    def test_integer_and_bool(self, dtype):
        x = make(self.shape((2,), 3, 4, 5, 2), dtype, 0, 100)
        check(self.ours(x, 2), self.theirs(x, 2), exact=True)

    @covers("nonfinite")
    def test_nonfinite(self):
        shape = self.shape((2,), 2, 3, 3, 2)  # 144 elements: 18 copies of the 8 special values
        x = nonfinite(torch.float32).repeat(18).view(shape)
        out, ref = self.ours(x, 2), self.theirs(x, 2)
        check(out, ref, exact=True)
        assert torch.equal(out.signbit(), ref.signbit())  # -0 moved, not zeroed

    @covers("empty")
    @pytest.mark.parametrize("batch,c,h,w", [((0,), 2, 3, 3), ((2,), 0, 3, 3), ((2,), 1, 0, 3)])
    def test_empty(self, batch, c, h, w):
        # Expected shapes by hand: ATen's CPU pixel_unshuffle returns empty inputs unchanged (its
        # CUDA path and its Python reference reshape them), so torch on CPU is no reference here.
        x = torch.empty(self.shape(batch, c, h, w, 2), device=DEVICE)
        assert self.ours(x, 2).shape == self.output_shape(batch, c, h, w, 2)

    def output_shape(self, batch, c, h, w, r):
        return (*batch, c, h * r, w * r)

    @covers("noncontiguous")
    def test_noncontiguous_and_layout(self):
        x = make(self.shape((3, 2), 2, 4, 6, 2), torch.float32)
        views = (x.transpose(0, 1), x[..., ::2, :],
                 x[0].to(memory_format=torch.channels_last), x[:1].expand(4, 2, *x.shape[2:]),
                 x.transpose(-1, -2))
        for view in views:
            out, ref = self.ours(view, 2), self.theirs(view, 2)
            check(out, ref, exact=True)
        channels_last = x[0].to(memory_format=torch.channels_last)
        assert self.ours(channels_last, 2).stride() == self.theirs(channels_last, 2).stride()

    @covers("noncontiguous", "out")
    def test_channels_last(self):
        """Channels-last inputs (4-D, and 5-D with channels innermost), read through their strides; the
        output takes ATen's format on this device; a channels-last out= keeps its strides."""
        x = make(self.shape((2,), 3, 4, 6, 2), torch.float32)
        batched = make(self.shape((2, 3), 3, 4, 6, 2), torch.float32)
        for view in (x.to(memory_format=torch.channels_last), batched.permute(0, 1, 3, 4, 2).contiguous()
                     .permute(0, 1, 4, 2, 3)):
            out, ref = self.ours(view, 2), self.theirs(view, 2)
            check(out, ref, exact=True)
            assert out.stride() == ref.stride()
        expected = self.theirs(x, 2)
        out = torch.empty_like(expected).to(memory_format=torch.channels_last)
        strides = out.stride()
        assert self.ours(x.to(memory_format=torch.channels_last), 2, out=out) is out
        check(out, expected, exact=True)
        assert out.stride() == strides

    @covers("out")
    def test_out(self):
        x = make(self.shape((2, 3), 2, 4, 6, 2), torch.float16)
        expected = self.theirs(x, 2)
        out = torch.empty_like(expected)
        assert self.ours(x, 2, out=out) is out
        check(out, expected, exact=True)
        unmergeable = torch.empty(expected.shape[::-1], dtype=x.dtype, device=DEVICE).permute(4, 3, 2, 1, 0)
        check(self.ours(x, 2, out=unmergeable), expected, exact=True)
        strided = torch.empty(*expected.shape[:-1], 2 * expected.shape[-1], dtype=x.dtype, device=DEVICE)[..., ::2]
        check(self.ours(x, 2, out=strided), expected, exact=True)
        with pytest.warns(UserWarning, match="resized"):
            check(self.ours(x, 2, out=torch.empty(3, dtype=x.dtype, device=DEVICE)), expected, exact=True)

    @covers("errors")
    def test_errors(self):
        for shape, r in self.error_cases:
            x = make(shape, torch.float32)
            same_error(lambda: self.ours(x, r), lambda: self.theirs(x, r))

    @covers("errors", "out")
    def test_out_dtype_error(self):
        x = make(self.shape((2,), 1, 2, 2, 2), torch.float32)
        bad = torch.empty(0, dtype=torch.int64, device=DEVICE)
        same_error(lambda: self.ours(x, 2, out=bad), lambda: self.theirs(x, 2, out=bad.clone()))

    def test_aten_adapters(self):
        x = make(self.shape((2,), 1, 3, 3, 2), torch.float32)
        overrides = aten_overrides()
        check(overrides[f"aten::{self.aten}"](x, 2), self.theirs(x, 2), exact=True)
        out = torch.empty(0, device=DEVICE)
        assert overrides[f"aten::{self.aten}.out"](x, 2, out=out) is out
        check(out, self.theirs(x, 2), exact=True)


def test_shuffle_then_unshuffle_is_identity():
    x = make((2, 18, 5, 7), torch.float32)
    check(F.pixel_unshuffle(pixel_shuffle_triton(x, 3), 3), x, exact=True)
