"""Route ATen ops to flagstack's kernels, as FlagGems does: `enable()`, `disable()`, `use_aten()`.

Every function offered with `registry.register_aten("aten::name[.overload]", fn)` is installed with
torch.library as the kernel of that op for one dispatch key (CUDA by default; AutogradCUDA for ops
ATen only defines as a composite of other ops, such as aten::rms_norm, whose CUDA slot autograd
never reaches), so plain PyTorch code (`F.softmax`, an HF model) runs our kernels. An adapter takes the op's ATen arguments and may return
`NotImplemented` for cases it does not cover (a dtype, an empty reduction): that call then runs the
kernel ATen had before, fetched with torch.library.get_kernel (torch >= 2.9) before overriding, so
there is no recursion through the dispatcher.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterable, Iterator

import torch

from flagstack.ops.registry import aten_overrides

_library: torch.library.Library | None = None
_installed: list[str] = []


def _kernel(name: str, adapter: Callable, original: object) -> Callable:
    def kernel(keyset: object, *args: object, **kwargs: object) -> object:
        result = adapter(*args, **kwargs)
        if result is NotImplemented:
            return original.call_boxed(keyset, *args, **kwargs)  # type: ignore[attr-defined]
        return result

    kernel.__name__ = f"flagstack_{name.replace('::', '_').replace('.', '_')}"
    return kernel


def _key_for(name: str, dispatch_key: str) -> str:
    """The key to override: the Autograd one for CompositeImplicitAutograd ops (inference only there)."""
    if torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeImplicitAutograd"):
        return f"Autograd{dispatch_key}"
    return dispatch_key


def enable(dispatch_key: str = "CUDA", only: Iterable[str] | None = None) -> list[str]:
    """Install our kernels for every registered ATen op (or just those named in `only`); returns their names.

    `dispatch_key` is "CUDA" for real use; "CPU" runs the kernels through the Triton interpreter and
    exists for tests (TRITON_INTERPRET=1). Calling enable() again while enabled changes nothing.
    """
    global _library
    if _library is not None:
        return list(_installed)
    if not hasattr(torch.library, "get_kernel"):
        raise RuntimeError(f"flagstack.ops.enable() needs torch >= 2.9 (torch.library.get_kernel); "
                           f"this is torch {torch.__version__}")
    overrides = aten_overrides()
    names = sorted(overrides) if only is None else list(only)
    unknown = [n for n in names if n not in overrides]
    if unknown:
        raise ValueError(f"only names ATen ops without a flagstack override: {unknown}; known: {sorted(overrides)}")
    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": that is the point
        for name in names:
            key = _key_for(name, dispatch_key)
            original = torch.library.get_kernel(name, key)
            library.impl(name.removeprefix("aten::"), _kernel(name, overrides[name], original), key,
                         with_keyset=True)
    _library = library
    _installed[:] = names
    return list(names)


def disable() -> None:
    """Remove every kernel `enable()` installed; ATen's own kernels run again. No-op when not enabled."""
    global _library
    if _library is not None:
        _library._destroy()
        _library = None
        _installed.clear()


def is_enabled() -> bool:
    """Whether `enable()` is in effect."""
    return _library is not None


@contextlib.contextmanager
def use_aten(dispatch_key: str = "CUDA", only: Iterable[str] | None = None) -> Iterator[list[str]]:
    """`with use_aten(): ...` runs the block with our ATen kernels, then restores the previous state."""
    was_enabled = is_enabled()
    names = enable(dispatch_key, only)
    try:
        yield names
    finally:
        if not was_enabled:
            disable()
