"""embedding: Triton gather vs torch.nn.functional.embedding (exact: it is a copy)."""
import pytest
import torch

from flagstack.ops import embedding, use_backend
from flagstack.ops.embedding import aten_embedding, embedding_triton
from flagstack.ops.registry import aten_overrides
from tests.ops.helpers import DEVICE, DTYPES, gpu_only, rows_for_device


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ids_shape", [(1,), (3, 7), (2, 1, 5), ()])
@pytest.mark.parametrize("hidden", [2560, 129, 8])
def test_matches_torch_exactly(hidden, ids_shape, dtype):
    id_dtype = torch.int32 if dtype == torch.float16 else torch.int64
    weight = torch.randn(300, hidden, dtype=dtype, device=DEVICE)
    ids = torch.randint(0, 300, ids_shape, dtype=id_dtype, device=DEVICE)
    out = embedding_triton(ids, weight)
    assert out.shape == (*ids_shape, hidden) and out.dtype == dtype
    assert torch.equal(out, torch.nn.functional.embedding(ids, weight))


def test_strided_inputs_nonfinite_rows_empty_and_out_of_range():
    weight = torch.randn(50, 40, device=DEVICE)
    weight[3, 5], weight[4, 0] = float("nan"), float("-inf")
    ids = torch.tensor([[3, 4, 49, 0, 3, 7]], device=DEVICE)[:, ::2]  # non-contiguous ids
    want = torch.nn.functional.embedding(ids, weight)
    assert torch.equal(embedding_triton(ids, weight).isnan(), want.isnan())
    assert torch.equal(embedding_triton(ids, weight).nan_to_num(), want.nan_to_num())
    sliced = torch.randn(50, 64, device=DEVICE)[:, 8:48]  # row stride 64, unit column stride
    assert torch.equal(embedding_triton(ids, sliced), sliced[ids])
    column_major = torch.randn(40, 50, device=DEVICE).t()
    assert torch.equal(embedding_triton(ids, column_major), column_major[ids])
    assert embedding_triton(torch.empty(0, 3, dtype=torch.long, device=DEVICE), weight).shape == (0, 3, 40)
    assert embedding_triton(ids, torch.empty(50, 0, device=DEVICE)).shape == (1, 3, 0)
    bad = embedding_triton(torch.tensor([-1, 50, 2], device=DEVICE), weight)  # documented: zero rows
    assert torch.equal(bad[:2], torch.zeros(2, 40, device=DEVICE)) and torch.equal(bad[2], weight[2])


def test_dispatch_and_errors():
    weight, ids = torch.randn(10, 4), torch.tensor([[1, 9], [0, 0]])
    with use_backend("reference"):
        assert torch.equal(embedding(ids, weight), weight[ids])
    with pytest.raises(ValueError, match=r"ids must be in \[0, 10\)"):
        embedding(torch.tensor([10]), weight)
    with pytest.raises(ValueError, match=r"got values in \[-2, 1\]"):
        embedding(torch.tensor([1, -2]), weight)
    with pytest.raises(ValueError, match="ids must have dtype"):
        embedding(ids.float(), weight)
    with pytest.raises(ValueError, match="weight must have 2 dimensions"):
        embedding(ids, torch.randn(10))
    with pytest.raises(ValueError, match="weight must have dtype"):
        embedding(ids, weight.long())


def test_aten_override():
    assert aten_overrides()["aten::embedding"] is aten_embedding
    weight, ids = torch.randn(10, 6, device=DEVICE), torch.tensor([[2, 3], [9, 0]], device=DEVICE)
    want = torch.nn.functional.embedding(ids, weight, padding_idx=0)  # padding only changes the gradient
    assert torch.equal(aten_embedding(weight, ids, 0, False, False), want)
    w64 = weight.double()  # not a kernel dtype: index_select fallback
    assert torch.equal(aten_embedding(w64, ids), torch.nn.functional.embedding(ids, w64))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        aten_embedding(weight[0], ids)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", rows_for_device([], [1, 256, 4096, 32768]))
def test_qwen3_shapes_gpu(rows, dtype):
    weight = torch.randn(151936, 2560, dtype=dtype, device="cuda")
    ids = torch.randint(0, 151936, (rows,), device="cuda")
    assert torch.equal(embedding_triton(ids, weight), torch.nn.functional.embedding(ids, weight))
