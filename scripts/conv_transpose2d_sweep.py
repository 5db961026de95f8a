"""Launch configs of the conv_transpose2d kernel on the scorecard's core shapes (H100): GPU time replayed from CUDA
graphs, against torch (cuDNN) timed the same way: `python3 scripts/conv_transpose2d_sweep.py`."""
import itertools

import torch
import triton.testing

import importlib
from flagstack.ops.score import CORE_SHAPES

ct = importlib.import_module("flagstack.ops.challenge.conv_transpose2d")  # the package exports the op under that name

default = dict(ct.CUDA_CONFIG)
for rows, cols, dtype in CORE_SHAPES["conv_transpose2d"]:
    case = ct._bench_case(rows, dtype, "cuda", cols=cols)
    ref = ct.conv_transpose2d_reference(*case.args)
    torch_us = 1e3 * triton.testing.do_bench_cudagraph(lambda: ct.conv_transpose2d_reference(*case.args), rep=50,
                                                       return_mode="median")
    print(f"== {rows}x{cols} {dtype}: torch GPU {torch_us:.1f} us", flush=True)
    results = []
    for block_m, warps, stages in itertools.product((64, 128, 256), (4, 8), (1, 2, 3)):
        ct.CUDA_CONFIG.update(BLOCK_M=block_m, num_warps=warps, num_stages=stages)
        try:
            torch.testing.assert_close(ct.conv_transpose2d_triton(*case.args), ref, rtol=0.016, atol=0.25)
            us = 1e3 * triton.testing.do_bench_cudagraph(lambda: ct.conv_transpose2d_triton(*case.args), rep=50,
                                                         return_mode="median")
            results.append((us, block_m, warps, stages))
        except Exception as err:  # noqa: BLE001 -- out of resources: reported, not fatal
            print(f"  M{block_m} w{warps} s{stages}: {type(err).__name__}", flush=True)
    for us, block_m, warps, stages in sorted(results)[:8]:
        mark = " (default)" if (block_m, warps, stages) == tuple(default.values()) else ""
        print(f"  BLOCK_M {block_m} warps {warps} stages {stages}: {us:.1f} us{mark}", flush=True)
    ct.CUDA_CONFIG.update(default)
