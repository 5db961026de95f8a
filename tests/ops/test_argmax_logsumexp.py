"""argmax_logsumexp vs torch on float64 copies: ids exact (first index on ties, first NaN wins), lse within
fp32 tolerance with torch's special values; every split path, strided rows, the error branches."""
import pytest
import torch

from flagstack.cli import main
from flagstack.ops import argmax_logsumexp, use_backend
from flagstack.ops.argmax_logsumexp import argmax_logsumexp_triton
from tests.ops.helpers import DEVICE, DTYPES, assert_close, gpu_only

INF, NAN = float("inf"), float("nan")
# the interpreter's numpy warns on inf - inf and log(0) in the special rows, as it should
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def check(out: tuple[torch.Tensor, torch.Tensor], logits: torch.Tensor) -> None:
    """ids equal torch.argmax, lse torch.logsumexp, both on a float64 copy (exact up-cast)."""
    ids, lse = out
    wide = logits.double()
    assert ids.dtype == torch.int64 and torch.equal(ids, torch.argmax(wide, -1))
    assert_close(lse, torch.logsumexp(wide, -1).float())


def hard_rows(cols: int, dtype: torch.dtype) -> torch.Tensor:
    """Ties everywhere (small integers), then special rows; the last column often sits alone in the last span."""
    x = torch.randint(-3, 3, (9, cols), device=DEVICE).to(dtype)
    x[0, cols // 2] = NAN
    x[1, cols - 1] = x[1, 7] = NAN  # two NaNs: the first wins
    x[2] = -INF  # -inf lse, index 0
    x[3, cols - 1] = INF  # +inf lse, the index of the inf
    x[4, 3], x[4, 5] = INF, -INF
    x[5, 2], x[5, cols - 2] = INF, NAN  # NaN beats +inf
    x[6, cols - 1] = 100  # a late max
    x[7] = 1.5  # all equal: index 0
    x[8, : cols // 2] = -INF  # -inf then ties
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols, block", [(1000, 256), (4097, 1024)])
@pytest.mark.parametrize("splits", [1, 3])
def test_hard_rows_every_split(cols, block, splits, dtype):
    x = hard_rows(cols, dtype)
    check(argmax_logsumexp_triton(x, splits=splits, block=block), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_logits_default_splits(dtype):
    x = (torch.randn(3, 4097, device=DEVICE) * 8).to(dtype)
    with use_backend("triton"):
        check(argmax_logsumexp(x), x)
    check(argmax_logsumexp(x), x)  # the backend picked for the device (CPU: the reference)


@gpu_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 256, 1024])
def test_vocab_rows(rows, dtype):
    x = (torch.randn(rows, 151936, device=DEVICE) * 6).to(dtype)
    check(argmax_logsumexp_triton(x), x)


@gpu_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_vocab_hard_rows(dtype):
    x = hard_rows(151936, dtype)
    check(argmax_logsumexp_triton(x), x)
    check(argmax_logsumexp_triton(x.repeat(120, 1)), x.repeat(120, 1))  # >= 4 rows per SM: one program per row


@pytest.mark.parametrize("values", [[0.5], [-INF], [INF], [NAN], [-3.0, 2.0, 2.0, NAN, INF]])
def test_tiny_rows(values):
    x = torch.tensor([values], device=DEVICE)
    check(argmax_logsumexp_triton(x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_strided_rows(dtype):
    base = torch.randn(6, 1500, device=DEVICE).to(dtype)
    x = base[::2, 100:1100]  # row stride 3000 > 1000 columns
    assert x.stride() == (3000, 1)
    with use_backend("triton"):
        check(argmax_logsumexp(x), x)


def test_empty_batch():
    x = torch.empty(0, 151936, device=DEVICE)
    for backend in ("triton", "reference"):
        with use_backend(backend):
            ids, lse = argmax_logsumexp(x)
        assert ids.shape == lse.shape == (0,) and (ids.dtype, lse.dtype) == (torch.int64, torch.float32)


def test_registered_and_listed(capsys):
    assert argmax_logsumexp.entry.backends() == ["triton", "reference"]
    assert main(["ops", "list"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("argmax_logsumexp "))
    assert "triton, reference" in line


def test_errors():
    x = torch.randn(3, 7)
    with pytest.raises(ValueError, match="logits must be a torch.Tensor"):
        argmax_logsumexp([[1.0]])
    with pytest.raises(ValueError, match="logits must have dtype"):
        argmax_logsumexp(x.long())
    with pytest.raises(ValueError, match="logits must have 2 dimensions"):
        argmax_logsumexp(x[0])
    with pytest.raises(ValueError, match="logits must have 2 dimensions"):
        argmax_logsumexp(x[None])
    with pytest.raises(ValueError, match="logits must have at least one column"):
        argmax_logsumexp(torch.empty(3, 0))
    with pytest.raises(ValueError, match="logits must have a unit stride"):
        argmax_logsumexp(torch.randn(7, 3).t())
