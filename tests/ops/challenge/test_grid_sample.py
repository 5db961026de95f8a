"""grid_sample and its backward: Triton kernels against aten::grid_sampler_2d / _3d[_backward] (every
mode x padding x align_corners, 2-D and 3-D, dtypes, layouts, out=, empty, non-finite values, error
parity) and F.grid_sample's autograd through our ATen overrides."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from flagstack.ops.aten import use_aten
from flagstack.ops.challenge.grid_sample import grid_sample, grid_sampler_2d_triton, grid_sampler_3d_triton
from flagstack.ops.challenge.grid_sample_backward import (grid_sampler_2d_backward_triton,
                                                          grid_sampler_3d_backward_triton)
from flagstack.ops.registry import use_backend
from tests.ops.challenge.common import INT_DTYPES, check, covers, large_only_on_gpu, make, nonfinite, same_error
from tests.ops.helpers import DEVICE, ON_GPU

aten = torch.ops.aten
OURS = {2: (grid_sampler_2d_triton, grid_sampler_2d_backward_triton),
        3: (grid_sampler_3d_triton, grid_sampler_3d_backward_triton)}
THEIRS = {2: (aten.grid_sampler_2d, aten.grid_sampler_2d_backward),
          3: (aten.grid_sampler_3d, aten.grid_sampler_3d_backward)}
MODES_2D = [(mode, padding, align) for mode in range(3) for padding in range(3) for align in (False, True)]
MODES_3D = [(mode, padding, align) for mode in range(2) for padding in range(3) for align in (False, True)]
LARGE = [(2, (8, 32, 128, 128), (128, 128), 0), (2, (8, 32, 128, 128), (128, 128), 2),  # dims, input, points, mode
         (2, (4, 100, 37, 300), (64, 257), 1), (3, (2, 16, 32, 48, 40), (20, 33, 31), 0)]


def make_grid(batch, points, dims, dtype=torch.float32):
    """Points in [-1.3, 1.3] (some outside the image), half of them on multiples of 1/8, which land on
    pixel centres and on the half-way ties nearest rounds to even."""
    grid = make((batch, *points, dims), torch.float32, -1.3, 1.3)
    snapped = torch.round(grid * 8) / 8
    return torch.where(torch.rand(grid.shape[:-1], device=DEVICE)[..., None] < 0.5, snapped, grid).to(dtype)


def problem(dims, dtype=torch.float32, channels=3, batch=2):
    x = make((batch, channels, *(4, 5, 6)[3 - dims:]), dtype)
    grid = make_grid(batch, (3, 4, 7)[3 - dims:], dims, dtype)
    return x, grid


def check_grid_grad(got, grad, x, grid, dims, mode, padding, align):
    """The grid's gradient sums input * grad over channels and taps, with cancellation: compared with
    ATen in fp64, to the challenge's rtol 1e-4 and an atol relative to the largest gradient. A point whose
    source coordinate lies within rounding of a cell edge has a one-sided gradient that depends on which
    cell the dtype's rounding picks (a jump of hundreds, seen once in the H100 matrix): there ATen on the
    grid's own dtype is the reference instead."""
    want = THEIRS[dims][1](grad.double(), x.double(), grid.double(), mode, padding, align, [False, True])[1]
    scale = want.abs().max().item() if want.numel() else 0.0
    tolerance = dict(rtol=1e-4, atol=1e-4 + 1e-5 * scale, equal_nan=True)
    close = torch.isclose(got.double(), want, **tolerance)
    if not close.all():
        same_rounding = THEIRS[dims][1](grad, x, grid, mode, padding, align, [False, True])[1]
        close |= torch.isclose(got.double(), same_rounding.double(), **tolerance)
    torch.testing.assert_close(torch.where(close, want, got.double()), want, **tolerance)


def check_backward(dims, grad, x, grid, mode, padding, align, **kw):
    ours = OURS[dims][1](grad, x, grid, mode, padding, align, [True, True], **kw)
    check(ours[0], THEIRS[dims][1](grad, x, grid, mode, padding, align, [True, False])[0])
    assert ours[1].dtype == grid.dtype and ours[1].shape == grid.shape
    check_grid_grad(ours[1], grad, x, grid, dims, mode, padding, align)
    return ours


@covers("small", "params", "ranks")
@pytest.mark.parametrize("mode,padding,align", MODES_2D)
def test_2d(mode, padding, align):
    x, grid = problem(2)
    check(grid_sampler_2d_triton(x, grid, mode, padding, align), aten.grid_sampler_2d(x, grid, mode, padding, align))
    grad = make((2, 3, 4, 7), torch.float32)
    check_backward(2, grad, x, grid, mode, padding, align)


def test_repeated_calls_keep_rank_and_alignment_apart():
    # The forward kernel is launched by a key of its arguments (launch_cache.py). A 2-D problem and a 3-D one of
    # depth 1 give the kernel the same shapes and strides, and a 4-byte-offset copy of x only a different
    # alignment: each must still get its own result, on first and repeated calls.
    x, grid = problem(2)
    storage = make((1 + x.numel(),), torch.float32)
    shifted = storage[1:].view(x.shape).copy_(x)
    flat_3d = (x.unsqueeze(2), grid.unsqueeze(1).contiguous())
    grid_3d = torch.cat([flat_3d[1], torch.zeros_like(flat_3d[1][..., :1])], dim=-1)  # z = 0: the single slice
    want = aten.grid_sampler_2d(x, grid, 0, 0, False)
    for _ in range(2):
        check(grid_sampler_2d_triton(x, grid, 0, 0, False), want)
        check(grid_sampler_2d_triton(shifted, grid, 0, 0, False), want)
        check(grid_sampler_3d_triton(flat_3d[0], grid_3d, 0, 0, False), aten.grid_sampler_3d(*flat_3d[:1], grid_3d,
                                                                                              0, 0, False))


@covers("small", "params", "ranks")
@pytest.mark.parametrize("mode,padding,align", MODES_3D)
def test_3d(mode, padding, align):
    x, grid = problem(3)
    check(grid_sampler_3d_triton(x, grid, mode, padding, align), aten.grid_sampler_3d(x, grid, mode, padding, align))
    grad = make((2, 3, 3, 4, 7), torch.float32)
    check_backward(3, grad, x, grid, mode, padding, align)


@covers("params")
@pytest.mark.parametrize("dims,mode", [(2, 0), (3, 1)])
def test_cuda_blocking(dims, mode, monkeypatch):
    """The forward's CUDA split (a point per thread, 4 channels unrolled, channel groups over programs, a
    partial last group) run under the interpreter: 10 channels, 2 blocks of 128 points."""
    module = sys.modules["flagstack.ops.challenge.grid_sample"]
    blocks = module.forward_blocks
    assert blocks(256, 10, True) == (4, 128, 4, 4)  # 2 point blocks: every 4-channel block its own program
    monkeypatch.setattr(module, "forward_blocks", lambda points, channels, cuda: blocks(points, channels, True))
    x = make((1, 10, *(3, 9, 11)[3 - dims:]), torch.float32)
    grid = make_grid(1, (2, 12, 8) if dims == 3 else (16, 12), dims)  # 192 points
    check(OURS[dims][0](x, grid, mode, 0, False), THEIRS[dims][0](x, grid, mode, 0, False))


@covers("float_dtypes")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("dims,mode,padding,align", [(2, 0, 0, False), (2, 2, 2, True), (3, 0, 1, False)])
def test_dtypes(dims, mode, padding, align, dtype):
    """Against ATen in fp32 on the same (rounded) inputs, rounded to dtype: ATen's fp16/bf16 CPU kernels
    round intermediate results, ours compute in fp32 as ATen's CUDA kernel."""
    x, grid = problem(dims, dtype)
    grad = make(x.shape[:2] + grid.shape[1:-1], dtype)
    up = [t.double() if dtype == torch.float64 else t.float() for t in (x, grid, grad)]
    check(OURS[dims][0](x, grid, mode, padding, align), THEIRS[dims][0](*up[:2], mode, padding, align).to(dtype))
    ours = OURS[dims][1](grad, x, grid, mode, padding, align, [True, True])
    theirs = THEIRS[dims][1](up[2], *up[:2], mode, padding, align, [True, True])
    check(ours[0], theirs[0].to(dtype))
    check(ours[1], theirs[1].to(dtype))


@covers("regular")
@pytest.mark.parametrize("mode", [0, 2])
def test_regular(mode):
    x = make((2, 5, 33, 40), torch.float32)
    grid = make_grid(2, (17, 65), 2)
    check(grid_sampler_2d_triton(x, grid, mode, 2, False), aten.grid_sampler_2d(x, grid, mode, 2, False))
    check_backward(2, make((2, 5, 17, 65), torch.float32), x, grid, mode, 2, False)


@covers("params")
@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_reflection_bounds(mode, align):
    """Points exactly on a reflection bound and its multiples (|coord - low| = k * span), where the flip count
    floor(dist / span) must come out exact: fp32 `/` in Triton is an approximate division on CUDA, which
    sent these points to the opposite edge (H100 score run: 330 of 11050 wrong)."""
    x = make((1, 2, 33, 40), torch.float32)
    bounds = torch.tensor([-5.0, -3.0, -1.0, 1.0, 3.0, 5.0], device=DEVICE)  # 0 to 3 spans from the low bound
    grid = torch.stack(torch.meshgrid(bounds, bounds, indexing="ij"), -1)[None]
    check(grid_sampler_2d_triton(x, grid, mode, 2, align), aten.grid_sampler_2d(x, grid, mode, 2, align))
    grad = make((1, 2, *grid.shape[1:3]), torch.float32)
    check(grid_sampler_2d_backward_triton(grad, x, grid, mode, 2, align, [True, False])[0],
          aten.grid_sampler_2d_backward(grad, x, grid, mode, 2, align, [True, False])[0])


def approximate_divisions_sm90() -> list[str]:
    """Approximate-division PTX instructions in the forward and backward kernels compiled for an H100 (sm90),
    fp32, reflection padding (the mode whose flip count divides): forward 2-D, backward 3-D with align_corners."""
    import re
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    found = []
    for kernel, constants in (
            (sys.modules["flagstack.ops.challenge.grid_sample"]._forward_kernel,
             {"ALIGN": False, "IS_3D": False, "WIDE": False}),
            (sys.modules["flagstack.ops.challenge.grid_sample_backward"]._backward_kernel,
             {"ALIGN": True, "IS_3D": True, "INPUT_GRAD": True})):
        constants |= {"MODE": 0, "PADDING": 2, "BLOCK_C": 4, "BLOCK_P": 128}
        signature = {name: "constexpr" if name in constants else "*fp32" if name.endswith("_ptr") else "i32"
                     for name in kernel.arg_names}
        ptx = triton_compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32)).asm["ptx"]
        found += re.findall(r"div\.(?:full|approx)\.f32", ptx)
    return found


@covers("params")
def test_compiled_divisions_are_exact():
    """The kernels compiled for sm90 use only IEEE-rounded fp32 division, as ATen's CUDA kernels (in a child
    process: the interpreter, TRITON_INTERPRET=1, patches triton.language for the CPU)."""
    pytest.importorskip("triton.backends.nvidia.compiler", reason="no CUDA backend in this triton")
    code = "from tests.ops.challenge.test_grid_sample import approximate_divisions_sm90 as f; print(len(f()))"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if run.returncode and "ptxas" in run.stderr:  # no sm90 assembler in this triton install
        pytest.skip(f"cannot compile for sm90 here: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == 0


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("dims,shape,points,mode", LARGE if ON_GPU else [])
def test_large(dims, shape, points, mode):
    x, grid = make(shape, torch.float32), make_grid(shape[0], points, dims)
    check(OURS[dims][0](x, grid, mode, 0, False), THEIRS[dims][0](x, grid, mode, 0, False))
    grad = make(shape[:2] + points, torch.float32)
    ours = OURS[dims][1](grad, x, grid, mode, 0, False, [True, True])
    theirs = THEIRS[dims][1](grad, x, grid, mode, 0, False, [True, True])
    check(ours[0], theirs[0])
    check_grid_grad(ours[1], grad, x, grid, dims, mode, 0, False)


@covers("int_dtypes", "errors")
@pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool])
def test_integer_inputs(dtype):
    x, grid = make((1, 2, 3, 4), dtype, 0, 5), make((1, 2, 2, 2), dtype, 0, 1)
    same_error(lambda: grid_sampler_2d_triton(x, grid, 0, 0, False), lambda: aten.grid_sampler_2d(x, grid, 0, 0, False))


@covers("nonfinite")
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_nonfinite_input(mode):
    x = nonfinite(torch.float32).view(1, 2, 2, 2)
    grid = make_grid(1, (5, 6), 2)
    out, ref = grid_sampler_2d_triton(x, grid, mode, 1, False), aten.grid_sampler_2d(x, grid, mode, 1, False)
    check(out, ref)
    if mode == 1:  # copies: -0 stays -0
        assert torch.equal(out.signbit(), ref.signbit())
    grad = nonfinite(torch.float32).repeat(8)[:60].view(1, 2, 5, 6)
    ours = grid_sampler_2d_backward_triton(grad, x, grid, mode, 1, False, [True, True])
    theirs = aten.grid_sampler_2d_backward(grad, x, grid, mode, 1, False, [True, True])
    check(ours[0], theirs[0])
    # Grid gradients sum inf * 0 terms (an infinite input under a zero grad_output): ATen's CPU kernel
    # groups them otherwise than ours and ATen's CUDA one (-inf vs NaN), so only finiteness must agree there.
    finite = theirs[1].isfinite()
    check(ours[1][finite], theirs[1][finite])
    assert not ours[1][~finite].isfinite().any()


@covers("nonfinite")
@pytest.mark.parametrize("mode", [0, 1])
def test_nonfinite_grid(mode):
    """Huge and non-finite grid values, hand-computed with ATen CUDA's rules (CPU ATen differs): they
    fall outside the image (index -100), so zeros padding samples 0; border clips +-inf to the edges
    and NaN to 0. x[h, w] = 1 + 4h + w; align_corners: pixel x = 1.5 (g + 1), y = g + 1."""
    x = torch.arange(1.0, 13.0, device=DEVICE).view(1, 1, 3, 4)
    inf, nan = float("inf"), float("nan")
    grid = torch.tensor([[nan, 0.0], [0.0, nan], [inf, 0.0], [-inf, 1.0], [1e10, 0.0], [-1.0, -1.0]],
                        device=DEVICE).view(1, 1, 6, 2)
    zeros = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0], device=DEVICE)
    check(grid_sampler_2d_triton(x, grid, mode, 0, True).flatten(), zeros)
    at_half = 3.0 if mode == 1 else 2.5  # pixel (x 1.5, y 0): nearest rounds to even (x 2), bilinear halves
    border = torch.tensor([5.0, at_half, 8.0, 9.0, 8.0, 1.0], device=DEVICE)
    check(grid_sampler_2d_triton(x, grid, mode, 1, True).flatten(), border)


@covers("empty")
def test_empty():
    cases = [((0, 3, 4, 5), (0, 2, 3, 2)), ((2, 0, 4, 5), (2, 2, 3, 2)), ((2, 3, 4, 5), (2, 0, 3, 2))]
    for x_shape, grid_shape in cases:
        x, grid = make(x_shape, torch.float32), make(grid_shape, torch.float32, -1, 1)
        check(grid_sampler_2d_triton(x, grid, 0, 0, False), aten.grid_sampler_2d(x, grid, 0, 0, False))
        check_backward(2, torch.zeros(x.shape[:2] + grid.shape[1:3], device=DEVICE), x, grid, 0, 0, False)


@covers("noncontiguous")
@pytest.mark.parametrize("dims", [2, 3])
def test_noncontiguous(dims):
    x, grid = problem(dims, channels=4)
    grad = make(x.shape[:2] + grid.shape[1:-1], torch.float32)
    layouts = [(x.transpose(-1, -2).contiguous().transpose(-1, -2), grid.transpose(1, 2).contiguous().transpose(1, 2)),
               (x[:, ::2], torch.cat([grid, grid], -1)[..., ::2]), (x[:1].expand_as(x), grid[:1].expand_as(grid))]
    if dims == 2:
        layouts.append((x.contiguous(memory_format=torch.channels_last), grid))
    for view, grid_view in layouts:
        out, ref = OURS[dims][0](view, grid_view, 0, 2, False), THEIRS[dims][0](view, grid_view, 0, 2, False)
        check(out, ref)
        assert out.stride() == ref.stride()
        grad_view = grad[:, :view.shape[1]].transpose(-1, -2).contiguous().transpose(-1, -2)
        check_backward(dims, grad_view, view, grid_view, 0, 1, True)


@covers("out")
def test_out():
    x, grid = problem(2)
    out = torch.empty(2, 3, 7, 4, device=DEVICE).transpose(2, 3)
    assert grid_sampler_2d_triton(x, grid, 0, 0, False, out=out) is out
    check(out, aten.grid_sampler_2d(x, grid, 0, 0, False))
    with pytest.warns(UserWarning, match="resized"):
        resized = grid_sampler_3d_triton(*problem(3), 1, 1, True, out=torch.empty(5, device=DEVICE))
    assert resized.shape == (2, 3, 3, 4, 7)
    grad = make((2, 3, 4, 7), torch.float32)
    out0, out1 = torch.empty(0, device=DEVICE), torch.empty(2, 7, 4, 2, device=DEVICE).transpose(1, 2)
    result = check_backward(2, grad, x, grid, 2, 2, False, out0=out0, out1=out1)
    assert result[0] is out0 and result[1] is out1
    half = torch.empty(0, dtype=torch.float16, device=DEVICE)
    same_error(lambda: grid_sampler_2d_triton(x, grid, 0, 0, False, out=half),
               lambda: aten.grid_sampler_2d.out(x, grid, 0, 0, False, out=half.clone()))


@covers("params")
def test_output_mask():
    x, grid = problem(2)
    grad = make((2, 3, 4, 7), torch.float32)
    grad_x, grad_grid = grid_sampler_2d_backward_triton(grad, x, grid, 0, 1, False, [False, True])
    assert grad_x is None
    check_grid_grad(grad_grid, grad, x, grid, 2, 0, 1, False)


@covers("params")
def test_autograd_through_aten_overrides():
    """F.grid_sample forward and backward with our kernels installed for ATen (CPU key, interpreter)."""
    x, grid = problem(2, channels=2)
    names = ["aten::grid_sampler_2d", "aten::grid_sampler_2d_backward"]
    results = []
    for ours in (True, False):  # ours in fp32, torch's in fp64
        dtype = torch.float32 if ours else torch.float64
        xi, gi = x.to(dtype, copy=True).requires_grad_(), grid.to(dtype, copy=True).requires_grad_()
        with use_aten(DEVICE.upper(), only=names) if ours else torch.enable_grad():
            y = F.grid_sample(xi, gi, mode="bicubic", padding_mode="reflection", align_corners=False)
            (y * torch.arange(y.numel(), device=DEVICE).view_as(y)).sum().backward()
        results.append((y.detach(), xi.grad, gi.grad))
    (y, grad_x, grad_grid), (y_ref, grad_x_ref, grad_grid_ref) = results
    check(y, y_ref.float())
    check(grad_x, grad_x_ref.float())
    torch.testing.assert_close(grad_grid.double(), grad_grid_ref, rtol=1e-4,
                               atol=1e-5 * grad_grid_ref.abs().max().item())
    with use_backend("triton"):
        check(grid_sample(x, grid, 0, 0, True), aten.grid_sampler_2d(x, grid, 0, 0, True))


@covers("errors")
def test_errors():
    x, grid = problem(2)
    bad_calls = [(x, grid.double(), 0, 0, False), (x, grid[:1], 0, 0, False), (x, grid[..., :1], 0, 0, False),
                 (x[:, :, :0], grid, 0, 0, False), (x[0], grid[0], 0, 0, False), (x, grid[0], 0, 0, False)]
    for args in bad_calls:
        same_error(lambda: grid_sampler_2d_triton(*args), lambda: aten.grid_sampler_2d(*args))
    x3, grid3 = problem(3)
    for args in [(x3, grid3, 2, 0, False), (x3, grid3[..., :2], 0, 0, False), (x, grid, 0, 0, False)]:
        same_error(lambda: grid_sampler_3d_triton(*args), lambda: aten.grid_sampler_3d(*args))
    grad = make((2, 3, 4, 7), torch.float32)
    for args in [(grad, x, grid.double(), 0, 0, False, [True, True]), (grad, x, grid[:1], 0, 0, False, [True, True])]:
        same_error(lambda: grid_sampler_2d_backward_triton(*args), lambda: aten.grid_sampler_2d_backward(*args))
    half = torch.empty(0, dtype=torch.float16, device=DEVICE)
    same_error(lambda: grid_sampler_2d_backward_triton(grad, x, grid, 0, 0, False, [True, True], out0=half,
                                                       out1=torch.empty(0, device=DEVICE)),
               lambda: aten.grid_sampler_2d_backward.out(grad, x, grid, 0, 0, False, [True, True], out0=half.clone(),
                                                         out1=torch.empty(0, device=DEVICE)))
    # ATen does not check these (undefined behaviour on CPU; reads past grad_output): we raise
    for call in (lambda: grid_sampler_2d_triton(x, grid, 3, 0, False),
                 lambda: grid_sampler_2d_triton(x, grid, 0, -1, True),
                 lambda: grid_sampler_2d_backward_triton(grad[..., :3], x, grid, 0, 0, False, [True, True]),
                 lambda: grid_sampler_2d_backward_triton(grad.double(), x, grid, 0, 0, False, [True, True])):
        with pytest.raises(RuntimeError):
            call()
