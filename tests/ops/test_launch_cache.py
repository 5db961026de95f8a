"""CachedLauncher: the first launch of a key goes through the kernel's own [grid] call; later launches of the
key go straight to the compiled kernel it returned, with every parameter in signature order. A fake kernel
stands in for Triton's (the interpreter compiles nothing); GPU runs of the conv_transpose2d and
channels_copy tests cover real kernels."""
from flagstack.ops import launch_cache
from flagstack.ops.launch_cache import CachedLauncher


class FakeCompiled:
    packed_metadata = object()

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
