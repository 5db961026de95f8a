"""Embedding tile shapes at few ids, against FlagGems, under CUDA-graph replay (warm L2, as the ops-graph
benchmark times them), H100: `python3 scripts/embedding_probe.py`. Session 9 probe for issue 2: at 256 ids our
8 x 512 tiles of 8 warps read 1.8 us against FlagGems' 1.7; do smaller tiles (more programs) close it?"""
import torch

from flagstack.bench.common import interleaved_medians
from flagstack.bench.ops import _flaggems_embedding
from flagstack.ops.embedding import _embedding_kernel, embedding_triton
from flagstack.ops.host import cdiv

VOCAB, HIDDEN = 151936, 2560


def tiles(block_t: int, block_d: int, warps: int):
    def run(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = torch.empty(ids.shape[0], HIDDEN, dtype=weight.dtype, device=weight.device)
        _embedding_kernel[(cdiv(ids.shape[0], block_t), cdiv(HIDDEN, block_d))](
            ids, weight, out, ids.shape[0], VOCAB, HIDDEN, weight.stride(0), BLOCK_T=block_t, BLOCK_D=block_d,
            num_warps=warps)
        return out
    return run


def main() -> None:
    weight = torch.randn(VOCAB, HIDDEN, dtype=torch.bfloat16, device="cuda")
    configs = [(8, 512, 8), (8, 512, 4), (4, 512, 4), (2, 512, 2), (4, 256, 2), (1, 512, 1), (2, 1024, 4),
               (1, 1024, 2), (16, 256, 8)]
    for rows in (256, 4096):
        ids = torch.randint(0, VOCAB, (rows,), device="cuda")
        want = embedding_triton(ids, weight)
        variants = {"ours": lambda: embedding_triton(ids, weight),
                    "flaggems": _flaggems_embedding({"ids": ids, "weight": weight})}
        for cfg in configs:
            fn = tiles(*cfg)
            assert torch.equal(fn(ids, weight), want)
            variants["%dx%d w%d" % cfg] = lambda fn=fn: fn(ids, weight)
        times = interleaved_medians(variants, rounds=7, cuda_graph=True)
        print(f"embedding {rows} ids (graph, warm L2, median of 7 rounds): "
              + ", ".join(f"{name} {t:.2f} us" for name, t in sorted(times.items(), key=lambda kv: kv[1])), flush=True)


if __name__ == "__main__":
    main()
