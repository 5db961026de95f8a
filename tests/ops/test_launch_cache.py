"""CachedLauncher: the first launch of a key goes through the kernel's own [grid] call; later launches of the
key go straight to the compiled kernel it returned, with every parameter in signature order. A fake kernel
stands in for Triton's (the interpreter compiles nothing); GPU runs of the conv_transpose2d and
channels_copy tests cover real kernels."""
import pytest
import torch

from flagstack.ops import launch_cache
from flagstack.ops.launch_cache import CachedLauncher, launch_key, launcher


class FakeCompiled:
    packed_metadata = object()
    run = None  # no C launcher: relaunches go through compiled[grid]

    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("cached", grid, args))


class FakeKernel:
    arg_names = ["x", "n", "BLOCK", "FLAG"]

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append(("jit", grid, args, kwargs))
            return FakeCompiled(self.log)
        return launch


def test_second_launch_of_a_key_skips_the_jit_and_passes_constexprs_in_order():
    kernel = FakeKernel()
    launch = CachedLauncher(kernel)
    launch("k", (4,), ("x0", 7), {"FLAG": True, "BLOCK": 16}, num_warps=4)
    launch("k", (5, 2), ("x1", 9), {"FLAG": True, "BLOCK": 16}, num_warps=4)
    launch("other", (4,), ("x2", 7), {"FLAG": False, "BLOCK": 16}, num_warps=4)
    assert kernel.log == [("jit", (4,), ("x0", 7), {"FLAG": True, "BLOCK": 16, "num_warps": 4}),
                          ("cached", (5, 2, 1), ("x1", 9, 16, True)),
                          ("jit", (4,), ("x2", 7), {"FLAG": False, "BLOCK": 16, "num_warps": 4})]


def test_interpreter_results_are_not_cached(monkeypatch):
    kernel = FakeKernel()
    monkeypatch.setattr(FakeKernel, "__getitem__", lambda self, grid: lambda *a, **k: self.log.append(grid))
    launch = CachedLauncher(kernel)
    for _ in range(2):
        launch("k", (1,), (), {"BLOCK": 1, "FLAG": 0})
    assert kernel.log == [(1,), (1,)]


def test_older_triton_always_goes_through_the_jit(monkeypatch):
    # before Triton 3.3 a compiled kernel took only the run-time arguments: no direct launches there
    monkeypatch.setattr(launch_cache, "DIRECT_LAUNCH", False)
    kernel = FakeKernel()
    launch = CachedLauncher(kernel)
    for _ in range(2):
        launch("k", (1,), ("x", 1), {"BLOCK": 1, "FLAG": 0})
    assert [entry[0] for entry in kernel.log] == ["jit", "jit"]


def test_cache_starts_over_when_full(monkeypatch):
    monkeypatch.setattr(launch_cache, "MAX_ENTRIES", 2)
    kernel = FakeKernel()
    launch = CachedLauncher(kernel)
    for key in ("a", "b", "c", "a"):
        launch(key, (1,), ("x", 1), {"BLOCK": 1, "FLAG": 0})
    assert [entry[0] for entry in kernel.log] == ["jit"] * 4  # "c" cleared the cache holding "a"


class FakeLauncher:
    """Triton's CudaLauncher as the bare path sees it: a C entry point and no scratch memory."""
    global_scratch_size = profile_scratch_size = 0
    launch_cooperative_grid, launch_pdl = False, True

    def __init__(self, log):
        self.launch = lambda *args: log.append(("bare", args))


def test_relaunch_calls_the_c_launcher_with_tritons_argument_layout(monkeypatch):
    kernel = FakeKernel()
    compiled = FakeCompiled(kernel.log)
    compiled.run, compiled.function = FakeLauncher(kernel.log), "fn"
    monkeypatch.setattr(FakeKernel, "__getitem__", lambda self, grid: lambda *a, **k: compiled)
    monkeypatch.setattr(launch_cache, "_stream_getter", lambda: lambda device: 77)
    launch = CachedLauncher(kernel)
    for grid in ((3,), (3, 2)):
        launch("k", grid, ("x", 5), {"BLOCK": 8, "FLAG": True})
    (bare,) = kernel.log
    assert bare == ("bare", (3, 2, 1, 77, "fn", False, True, None, None, compiled.packed_metadata, None, None, None,
                             "x", 5, 8, True))


def test_launch_key_tells_apart_what_triton_specializes_on():
    x = torch.zeros(8, dtype=torch.float32)
    base = launch_key((x, 16, 2.0, (4, 1)), {"BLOCK": 8, "num_warps": 4})
    assert base == launch_key((torch.ones(8), 16, 3.5, (4, 1)), {"BLOCK": 8, "num_warps": 4})  # floats by type
    for args, constexprs, options in [((x[1:], 16, 2.0, (4, 1)), {"BLOCK": 8}, {"num_warps": 4}),  # misaligned
                                      ((x.half(), 16, 2.0, (4, 1)), {"BLOCK": 8}, {"num_warps": 4}),
                                      ((x, 17, 2.0, (4, 1)), {"BLOCK": 8}, {"num_warps": 4}),
                                      ((x, True, 2.0, (4, 1)), {"BLOCK": 8}, {"num_warps": 4}),
                                      ((x, 16, 2.0, (4, 2)), {"BLOCK": 8}, {"num_warps": 4}),
                                      ((x, 16, 2.0, (4, 1)), {"BLOCK": 16}, {"num_warps": 4}),
                                      ((x, 16, 2.0, (4, 1)), {"BLOCK": 8}, {"num_warps": 8})]:
        assert launch_key(args, {**constexprs, **options}) != base


@pytest.mark.parametrize("key", ["given", None])
def test_no_key_means_one_read_off_the_arguments(key):
    kernel = FakeKernel()
    launch = CachedLauncher(kernel)
    for n in (16, 16, 17):
        launch(key, (1,), ("x", n), {"BLOCK": 1, "FLAG": 0})
    # a given key is trusted to fix n; without one, n = 17 is a new key
    assert [entry[0] for entry in kernel.log] == (["jit", "cached", "cached"] if key else ["jit", "cached", "jit"])


def test_launcher_is_one_per_kernel():
    first, second = FakeKernel(), FakeKernel()
    assert launcher(first) is launcher(first) and launcher(first) is not launcher(second)
    assert launcher(first).kernel is first


class FakeParam:
    def __init__(self, name, do_not_specialize=False, default=None):
        self.name, self.do_not_specialize = name, do_not_specialize
        self.has_default, self.default = default is not None, default


def test_unspecialized_integers_key_by_width_and_defaults_complete_the_constexprs():
    # n is do_not_specialize (a token count): any 32-bit value reuses the compiled kernel, a 64-bit one does
    # not; FLAG is left to its default, which the direct launch must pass in its place
    kernel = FakeKernel()
    kernel.params = [FakeParam("x"), FakeParam("n", do_not_specialize=True), FakeParam("BLOCK"),
                     FakeParam("FLAG", default=True)]
    launch = CachedLauncher(kernel)
    for n in (3, 4000, 2**40):
        launch.launch((1,), "x", n, BLOCK=16, num_warps=2)
    assert kernel.log == [("jit", (1,), ("x", 3), {"BLOCK": 16, "num_warps": 2}),
                          ("cached", (1, 1, 1), ("x", 4000, 16, True)),
                          ("jit", (1,), ("x", 2**40), {"BLOCK": 16, "num_warps": 2})]


def test_launch_passes_constexprs_and_options_as_given():
    kernel = FakeKernel()
    launch_cache.launch(kernel, (2,), "x", 5, BLOCK=8, FLAG=False, num_warps=4, launch_pdl=True)
    launch_cache.launch(kernel, (3,), "x", 5, BLOCK=8, FLAG=False, num_warps=4, launch_pdl=True)
    assert kernel.log == [("jit", (2,), ("x", 5), {"BLOCK": 8, "FLAG": False, "num_warps": 4, "launch_pdl": True}),
                          ("cached", (3, 1, 1), ("x", 5, 8, False))]
