"""pixel_unshuffle: the pixel_shuffle suite run on the inverse op, against F.pixel_unshuffle."""
from flagstack.ops.challenge.pixel_shuffle import pixel_unshuffle_reference, pixel_unshuffle_triton
from tests.ops.challenge import test_pixel_shuffle as shuffle_tests


class TestPixelUnshuffle(shuffle_tests.TestPixelShuffle):
    aten = "pixel_unshuffle"
    error_cases = [((4, 4), 2), ((4,), 1), ((2, 8, 4, 4), 0), ((2, 8, 4, 4), -1), ((2, 8, 3, 4), 2),
                   ((2, 8, 4, 3), 2)]

    def ours(self, x, r, **kw):
        return pixel_unshuffle_triton(x, r, **kw)

    def theirs(self, x, r, **kw):
        return pixel_unshuffle_reference(x, r, **kw)

    def shape(self, batch, c, h, w, r):
        """The input shape whose channel side is [*batch, c*r*r, h, w]: [*batch, c, h*r, w*r]."""
        return (*batch, c, h * r, w * r)

    def output_shape(self, batch, c, h, w, r):
        return (*batch, c * r * r, h, w)
