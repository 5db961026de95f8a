"""Embedding lookup: out[..., :] = weight[ids[...], :] (a gather of whole rows).

Each program copies a [BLOCK_T ids, BLOCK_D columns] tile: one id load per row, then contiguous
16-byte vectors of the weight row to the output. Memory traffic: read ids (T*id_size) and T weight
rows, write T rows: 2*T*D*elem_size bytes plus the ids. Qwen3-4B (vocab 151936, D=2560, bf16) at
T=32768 moves 336 MB -> ~112 us at 3.0 TB/s.

Out-of-range ids (negative, or >= num_embeddings): checking them needs the ids' min/max, a device
sync on CUDA, so `validate` only checks ids that live on the CPU (ValueError). On the GPU the kernel
masks them and writes a zero row instead of reading outside the table (ATen would assert instead).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.checks import FLOAT_DTYPES, check_same_device, check_tensor
from flagstack.ops.host import cdiv, row_tile
from flagstack.ops.launch_cache import launch
from flagstack.ops.registry import BenchCase, register, register_aten

ID_DTYPES = (torch.int32, torch.int64)


@triton.jit(do_not_specialize=["n_ids"])  # token count: one compile for all
def _embedding_kernel(ids_ptr, w_ptr, out_ptr, n_ids, n_rows, n_cols, w_row_stride,
                      BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    toks = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ids = tl.load(ids_ptr + toks, mask=toks < n_ids, other=-1).to(tl.int64)
    valid = (toks < n_ids) & (ids >= 0) & (ids < n_rows)
    col_mask = (cols < n_cols)[None, :]
    rows = tl.load(w_ptr + ids[:, None] * w_row_stride + cols[None, :], mask=valid[:, None] & col_mask, other=0.0)
    tl.store(out_ptr + toks[:, None] * n_cols + cols[None, :], rows, mask=(toks < n_ids)[:, None] & col_mask)


def embedding_triton(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """weight[ids] with the Triton kernel; out-of-range ids give zero rows."""
    flat = ids if ids.dim() == 1 and ids.stride(0) == 1 else ids.reshape(-1).contiguous()  # unit stride
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    n_cols = weight.shape[1]
    out = torch.empty(flat.shape[0], n_cols, dtype=weight.dtype, device=weight.device)
    if out.numel() > 0:
        # 4096-element tiles (2560 -> 8 ids x 512 columns, no masked lanes): 1024-element tiles made
        # 49K tiny programs at 4096 ids and reached 80% of copy speed
        block_t, block_d = row_tile(n_cols, 4096)
        grid = (cdiv(flat.shape[0], block_t), cdiv(n_cols, block_d))
        launch(_embedding_kernel, grid, flat, weight, out, flat.shape[0], weight.shape[0], n_cols, weight.stride(0),
               BLOCK_T=block_t, BLOCK_D=block_d, num_warps=8)
    return out if flat is ids else out.view(*ids.shape, n_cols)


def embedding_reference(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """weight[ids]: the rows of the table, in the shape of ids plus the embedding dim (torch)."""
    return torch.nn.functional.embedding(ids, weight)


def _validate(ids: torch.Tensor, weight: torch.Tensor) -> None:
    check_tensor("ids", ids, dtypes=ID_DTYPES, min_dim=0)
    check_tensor("weight", weight, dtypes=FLOAT_DTYPES, min_dim=2, max_dim=2)
    check_same_device(ids=ids, weight=weight)
    if not ids.is_cuda and ids.numel() > 0:  # cheap on the CPU only; see the module docstring
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= weight.shape[0]:
            raise ValueError(f"ids must be in [0, {weight.shape[0]}) (weight rows), got values in [{low}, {high}]")


def _bench_case(rows: int, dtype: torch.dtype, device: str, vocab: int = 151936, hidden: int = 2560) -> BenchCase:
    if not str(device).startswith("cuda"):
        vocab = 1024  # the CPU checks run through the interpreter; a 1.5 GB fp32 table would only cost time
    weight = torch.randn(vocab, hidden, dtype=dtype, device=device)
    ids = torch.randint(0, vocab, (rows,), device=device)
    return BenchCase((ids, weight), bytes_moved=2 * rows * hidden * weight.element_size() + ids.numel() * 8)


def aten_embedding(weight: torch.Tensor, indices: torch.Tensor, padding_idx: int = -1,
                   scale_grad_by_freq: bool = False, sparse: bool = False) -> torch.Tensor:
    """aten::embedding(Tensor weight, Tensor indices, SymInt padding_idx=-1, bool scale_grad_by_freq=False,
    bool sparse=False); the last three only change the gradient, which this forward kernel has none of."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D, got shape {tuple(weight.shape)}")
    if weight.dtype not in FLOAT_DTYPES or indices.dtype not in ID_DTYPES:  # e.g. float64, int16 ids
        return weight.index_select(0, indices.reshape(-1)).view(*indices.shape, weight.shape[-1])
    return embedding_triton(indices, weight)


embedding = register("embedding", reference=embedding_reference, triton=embedding_triton, validate=_validate,
                     bench_case=_bench_case)
register_aten("aten::embedding", aten_embedding)
