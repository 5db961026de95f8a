"""The attention benchmark's arithmetic and target checks (the timings themselves need a GPU)."""
import argparse

import pytest
import torch

from flagstack.bench import attention as bench
from tests.ops.helpers import ON_GPU


def test_flops_and_bytes_by_hand():
    # 3 queries over 2 cached keys see 3, 4, 5 keys: 12 (q.k, p.v) pairs of 2 flops x 2 matmuls
    assert bench.attention_flops(1, 3, 2) == 4 * 12 * 32 * 128
    assert bench.attention_flops(2, 4, 0) == 2 * 4 * 10 * 32 * 128
    assert bench.decode_bytes(256, 2048) == 2 * 256 * 2048 * 8 * 128 * 2


def test_shortfalls_flags_only_missed_targets():
    rows = [{"case": "decode", "batch": 64, "ctx": 2048, "%copy": 80.0, "vs_sdpa": 1.1},
            {"case": "decode", "batch": 256, "ctx": 2048, "%copy": 90.0, "vs_sdpa": 0.9},
            {"case": "decode", "batch": 1, "ctx": 8192, "%copy": 55.0, "vs_sdpa": 2.0},
            {"case": "decode", "batch": 1, "ctx": 1024, "%copy": 20.0, "vs_sdpa": 2.0},
            {"case": "prefill", "batch": 1, "ctx": 4096, "vs_sdpa": 0.7},
            {"case": "prefill", "batch": 1, "ctx": 16384, "vs_sdpa": 0.7}]
    misses = bench.shortfalls(rows)
    assert len(misses) == 4
    assert "80% of copy" in misses[0] and "0.90x SDPA" in misses[1] and "55%" in misses[2] and "70%" in misses[3]


@pytest.mark.skipif(ON_GPU, reason="on a GPU run() times everything")
def test_run_without_gpu_skips(tmp_path):
    assert bench.run(argparse.Namespace(quick=True, fresh=False, out_dir=str(tmp_path))) == []


def test_fp8_caches_casts_only_the_two_caches():
    q, k, v, lens = torch.ones(2, 4, 8), torch.full((3, 16, 1, 8), 1.5), torch.full((3, 16, 1, 8), -2.0), [5, 6]
    out = bench.fp8_caches((q, k, v, lens, 0.5))
    assert out[0] is q and out[3] is lens and out[4] == 0.5
    assert out[1].dtype == out[2].dtype == torch.float8_e4m3fn
    assert out[1].float().eq(1.5).all() and out[2].float().eq(-2.0).all()  # both exact in e4m3
