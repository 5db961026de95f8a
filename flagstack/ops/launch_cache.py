"""Relaunch a compiled Triton kernel without Triton's per-call argument inspection.

`kernel[grid](*args)` looks its binary up on every call: it binds the arguments, specializes each one
(a tensor's dtype and 16-byte alignment, an integer's width, whether it is 1, whether 16 divides it)
and hashes the result. For conv_transpose2d's ~40 arguments that cost more Python time on an H100
host than its whole kernel runs on the GPU (scripts/host_overhead.py: 108 us of host time per call
against 9.4 us of GPU time on the small core shape; torch's conv takes 18 us of host time). A wrapper
that already knows everything the specialization depends on (shapes, strides, dtypes, which pointers
are aligned) can key the compiled kernel by that and launch it directly the next time, through the
compiled kernel's C launcher. FlagGems' LibEntry and vLLM's jit cache cut the same cost.

A key comes from the caller, who knows the shapes and layouts (conv_transpose2d keys its whole call plan
that way), or is read off the arguments (`launch_key`: a short loop over them, cheaper than Triton's
binding; the LLM ops, pointwise ops, pools, tril, pixel_shuffle and scatter_reduce use it). A caller's key must
fix every value Triton specializes on: each run-time integer (or a function of the key, such as a stride
of a tensor the wrapper allocates), each pointer's dtype and alignment, the constexprs and launch options.

Under TRITON_INTERPRET=1 nothing is cached: the interpreter runs every launch. Nor before Triton 3.3,
whose compiled kernels took only the run-time arguments (from 3.3 on they take every parameter,
constexprs included, which is what the direct launch passes).
"""
from __future__ import annotations

import functools

import torch
import triton

MAX_ENTRIES = 512  # compiled kernels kept per launcher; a caller seeing more distinct keys starts over


def remember(cache: dict, key, value) -> None:
    """cache[key] = value, the cache emptied first when it holds MAX_ENTRIES (one caller seeing many shapes)."""
    if len(cache) >= MAX_ENTRIES:
        cache.clear()
    cache[key] = value


def aligned(t: torch.Tensor) -> bool:
    """Whether t's data pointer is 16-byte aligned: Triton compiles aligned and unaligned pointers apart."""
    return t.data_ptr() % 16 == 0


# Triton versions whose compiled kernels take every parameter in order (see the module docstring)
DIRECT_LAUNCH = tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 3)


@functools.cache
def _has_cuda() -> bool:
    return torch.cuda.is_available()


def launch_key(args: tuple, keywords: dict, loose: frozenset[int] = frozenset()) -> tuple:
    """A key fixing all that Triton specializes a launch on, read off the arguments themselves: each
    tensor's dtype and 16-byte alignment, each integer's (and bool's) value (Triton looks at its width,
    whether it is 1 and whether 16 divides it), floats by type only, tuples element by element, and the
    keyword arguments (constexprs and launch options) as given. Integers at the `loose` positions (a
    kernel's do_not_specialize parameters) count by width only, so a token count that changes every step
    keeps one key."""
    # tensors and integers inline: one function call per argument cost a third of the key's time
    if loose:
        parts = [(a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor)
                 else (_int_width(a) if i in loose else a) if type(a) is int else _arg_key(a)
                 for i, a in enumerate(args)]
    else:
        parts = [(a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor)
                 else a if type(a) is int else _arg_key(a) for a in args]
    return tuple(parts), tuple(keywords.items())


def _int_width(value: int) -> str:
    """The integer type Triton gives an unspecialized integer argument."""
    if -2**31 <= value < 2**31:
        return "i32"
    return "u64" if value >= 2**63 else "i64"


def _arg_key(arg):
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, (tuple, list)):
        return tuple(_arg_key(a) for a in arg)
    if isinstance(arg, float):
        return float
    return type(arg), arg  # int, bool, None


def _stream_getter():
    """Triton's own lookup of a device's current stream (torch's raw stream: graph capture included)."""
    return triton.runtime.driver.active.get_current_stream


def _listened() -> bool:
    """Whether a launch hook is set (Triton keeps an empty HookChain when none is; older ones None)."""
    hook = triton.knobs.runtime.launch_enter_hook
    return hook is not None and bool(getattr(hook, "calls", True))


def _direct_launch(compiled, trailing: tuple):
    """A function (grid, args, device) that relaunches `compiled`. Where Triton's launcher needs no scratch
    memory it calls the launcher's C entry point itself: CompiledKernel's own [grid] path costs ~15 us of
    Python a call on a slow host (a stream lookup, launch metadata, a scratch check per call)."""
    def through_triton(grid, args, device) -> None:
        compiled[(*grid, 1, 1)[:3]](*args, *trailing)

    run = compiled.run  # loads the binary on first use
    if (getattr(run, "launch", None) is None or run.global_scratch_size or run.profile_scratch_size
            or not hasattr(triton, "knobs")):
        return through_triton
    launch, function, metadata = run.launch, compiled.function, compiled.packed_metadata
    cooperative, pdl = run.launch_cooperative_grid, run.launch_pdl
    stream_of = _stream_getter()

    def relaunch(grid, args, device) -> None:
        if _listened():  # a profiler listens: Triton's own path calls its hooks
            through_triton(grid, args, device)
            return
        x, y, z = (*grid, 1, 1)[:3]
        launch(x, y, z, stream_of(device), function, cooperative, pdl, None, None, metadata, None, None, None,
               *args, *trailing)
    return relaunch


class CachedLauncher:
    """Launches one @triton.jit kernel whose constexpr parameters all follow its run-time ones."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self._compiled: dict = {}
        params = getattr(kernel, "params", ())  # the interpreter's kernels have none (and are never cached)
        self._loose = frozenset(i for i, p in enumerate(params) if p.do_not_specialize)
        self._defaults = {p.name: p.default for p in params if p.has_default}

    def __call__(self, key, grid: tuple[int, ...], args: tuple, constexprs: dict, **options) -> None:
        """kernel[grid](*args, **constexprs, **options), the compiled kernel looked up by (key, device); a key
        of None is made from the arguments (launch_key)."""
        self._run(key, grid, args, {**constexprs, **options})

    def launch(self, grid: tuple[int, ...], *args, **kwargs) -> None:
        """kernel[grid](*args, **kwargs) (constexprs and launch options alike), keyed by the arguments."""
        self._run(None, grid, args, kwargs)

    def _run(self, key, grid: tuple[int, ...], args: tuple, kwargs: dict) -> None:
        if key is None:
            key = launch_key(args, kwargs, self._loose)
        device = torch.cuda.current_device() if _has_cuda() else None  # a binary is loaded per device
        relaunch = self._compiled.get((key, device))
        if relaunch is not None:
            relaunch(grid, args, device)
            return
        compiled = self.kernel[grid](*args, **kwargs)
        trailing = {**self._defaults, **kwargs}  # launch options too: only parameter names are read from it
        names = self.kernel.arg_names[len(args):]
        # compiled (the interpreter returns none), and every later parameter known (else: no direct launch)
        if DIRECT_LAUNCH and hasattr(compiled, "packed_metadata") and all(n in trailing for n in names):
            remember(self._compiled, (key, device), _direct_launch(compiled, tuple(trailing[n] for n in names)))


_LAUNCHERS: dict[int, CachedLauncher] = {}


def launcher(kernel) -> CachedLauncher:
    """The one CachedLauncher of `kernel`, for wrappers that choose their kernel per call. Looked up by id:
    a JITFunction hashes through its locked cache_key property, a cost on every launch."""
    found = _LAUNCHERS.get(id(kernel))
    if found is None:  # the launcher holds the kernel, so no other object can take its id
        found = _LAUNCHERS[id(kernel)] = CachedLauncher(kernel)
    return found


def launch(kernel, grid: tuple[int, ...], *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs) through the kernel's CachedLauncher (see CachedLauncher.launch)."""
    launcher(kernel).launch(grid, *args, **kwargs)
