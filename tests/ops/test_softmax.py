"""softmax / log_softmax: every kernel path (narrow, wide online, split row) against the fp32 torch reference."""
import pytest
import torch

from flagstack.ops import log_softmax, softmax, use_backend
from flagstack.ops.softmax import (_launch_narrow, _launch_split, _launch_wide, log_softmax_reference,
                                   log_softmax_triton, softmax_reference, softmax_triton)
from tests.ops.helpers import DEVICE, DTYPES, ON_GPU, assert_close

PAIRS = [(softmax_triton, softmax_reference), (log_softmax_triton, log_softmax_reference)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, cols", [(5, 1), (3, 100), (2, 1000)]
                         + ([(1, 151936), (256, 151936), (4096, 151936), (300, 2560)] if ON_GPU else []))
@pytest.mark.parametrize("log", [False, True])
def test_matches_reference(rows, cols, dtype, log):
    triton_fn, reference = PAIRS[log]
    x = torch.randn(rows, cols, dtype=dtype, device=DEVICE) * 4
    assert_close(triton_fn(x), reference(x))


@pytest.mark.parametrize("rows", [2, 4])
@pytest.mark.parametrize("log", [False, True])
def test_wide_rows_pick_split_or_loop(rows, log):
    """Rows wider than NARROW_MAX: on CPU the SM count is 4, so 2 rows take the split path, 4 the loop."""
    triton_fn, reference = PAIRS[log]
    x = torch.randn(rows, 16500, dtype=torch.bfloat16, device=DEVICE) * 4
    assert_close(triton_fn(x), reference(x))


@pytest.mark.parametrize("launch", [_launch_narrow, _launch_wide, _launch_split])
@pytest.mark.parametrize("log", [False, True])
def test_each_kernel_with_special_rows(launch, log):
    """+inf, nan and all -inf rows give nan rows as in torch; partly -inf rows give exact zeros / -inf;
    6 more rows with large logits (|max| ~ 40)."""
    inf, nan = float("inf"), float("nan")
    x = torch.cat([torch.randn(6, 150, device=DEVICE), torch.randn(6, 150, device=DEVICE) * 10 + 30])
    x[0, 7] = inf
    x[1, 140] = nan
    x[2] = -inf
    x[3, ::2] = -inf
    x[4, 64:] = -inf  # later blocks of the online kernels see only -inf
    x[5, :128] = -inf  # earlier blocks see only -inf
    out = torch.empty_like(x)
    if launch is _launch_narrow:
        launch(x, out, log)
    else:  # wide: 8 persistent programs on CPU (2 per assumed SM) walk the 12 rows, 64 columns a block
        launch(x, out, log, 64)
    expected = (torch.log_softmax if log else torch.softmax)(x.cpu(), -1)
    assert torch.equal(out.isnan().cpu(), expected.isnan())
    assert_close(out.cpu(), expected)


@pytest.mark.parametrize("log", [False, True])
def test_out_dtype_other_dims_and_strides(log):
    triton_fn, reference = PAIRS[log]
    x = torch.randn(4, 6, 10, dtype=torch.float16, device=DEVICE)
    for dim in (0, 1, -1):
        out = triton_fn(x, dim)
        assert out.is_contiguous()
        assert_close(out, reference(x, dim))
    assert_close(triton_fn(x, 1, torch.float32), reference(x, 1, torch.float32))
    strided = torch.randn(8, 40, device=DEVICE)[::2, ::3]  # neither dim unit-stride
    assert_close(triton_fn(strided), reference(strided))
    assert_close(triton_fn(strided.t(), 0), reference(strided.t(), 0))


def test_empty_and_scalar():
    for shape in [(0, 5), (3, 0), (0,)]:
        assert softmax_triton(torch.empty(shape, device=DEVICE)).shape == shape
    assert softmax_triton(torch.tensor(2.5, device=DEVICE)).item() == 1.0
    assert log_softmax_triton(torch.tensor(2.5, device=DEVICE)).item() == 0.0


def test_reference_against_float64_math():
    x = torch.randn(3, 50, dtype=torch.float64)
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    assert_close(softmax_reference(x.float()), (e / e.sum(-1, keepdim=True)).float())
    assert_close(log_softmax_reference(x.float()), (e / e.sum(-1, keepdim=True)).log().float())


def test_dispatch_and_errors():
    x = torch.randn(2, 8)
    with use_backend("reference"):
        assert_close(softmax(x), torch.softmax(x, -1))
        assert_close(log_softmax(x, 0, torch.float32), torch.log_softmax(x, 0))
    with pytest.raises(ValueError, match="x must have dtype"):
        softmax(x.long())
    with pytest.raises(ValueError, match="dim must be"):
        softmax(x, 2)
    with pytest.raises(ValueError, match="dim must be"):
        log_softmax(x, 1.0)
    with pytest.raises(ValueError, match="dtype must be"):
        softmax(x, -1, torch.float64)
