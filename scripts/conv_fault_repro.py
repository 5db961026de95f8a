"""conv_transpose2d on the test_large fp32 case that broke cuDNN on the H100 when interleaved with it: does our
kernel write outside its output? The output is a view into a sentinel-filled buffer; the script reports which
sentinel elements changed, for each dtype. `python3 scripts/conv_fault_repro.py`"""
import importlib

import torch

ct = importlib.import_module("flagstack.ops.challenge.conv_transpose2d")
params = ((2, 3), (1, 2), (1, 0), 2, (1, 2))
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4, 96, 33, 47, device="cuda", generator=g).to(dtype)
    w = torch.randn(96, 40, 4, 5, device="cuda", generator=g).to(dtype)
    b = torch.randn(80, device="cuda", generator=g).to(dtype)
    ref = torch.nn.functional.conv_transpose2d(x, w, b, *params)
    pad = 1 << 20
    buf = torch.full((2 * pad + ref.numel(),), 12345.0, device="cuda", dtype=dtype)
    out = buf[pad:pad + ref.numel()].view(ref.shape)
    x0, w0 = x.clone(), w.clone()
    ct.conv_transpose2d_triton(x, w, b, *params, out=out)
    torch.cuda.synchronize()
    before, after = buf[:pad] != 12345.0, buf[pad + ref.numel():] != 12345.0
    print(dtype, "out max err", (out.float() - ref.float()).abs().max().item(),
          "| changed before:", int(before.sum()), "after:", int(after.sum()),
          "first after:", int(after.nonzero()[0]) if after.any() else None,
          "| x, w intact:", torch.equal(x, x0) and torch.equal(w, w0), flush=True)
