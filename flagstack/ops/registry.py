"""Op registry: every op name maps to a Triton kernel, a PyTorch reference and, where installed,
FlagGems; `dispatch` picks one per call.

Backend choice, first match wins:
  1. `use_backend(...)` / `set_backend(...)` in Python,
  2. the environment variable FLAGSTACK_BACKEND = auto | triton | reference | flaggems (read once),
  3. auto: Triton for CUDA tensors, the reference for anything else.
Forcing `triton` on CPU tensors only works under TRITON_INTERPRET=1 (that is how CI tests kernels).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

BACKENDS = ("auto", "triton", "reference", "flaggems")


@dataclass
class BenchCase:
    """Inputs for one timed call, with the bytes it must move at least (for GB/s)."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    bytes_moved: int = 0


@dataclass
class OpEntry:
    name: str
    reference: Callable
    triton: Callable | None = None
    flaggems: str | None = None  # attribute path in flag_gems, e.g. "ops.rms_norm"
    validate: Callable | None = None  # raises ValueError naming the bad argument
    bench_case: Callable[..., BenchCase] | None = None  # (rows, dtype, device) -> BenchCase
    doc: str = ""

    def backends(self) -> list[str]:
        names = ["reference"]
        if self.triton is not None:
            names.insert(0, "triton")
        if self.flaggems is not None and _flaggems_fn(self.flaggems) is not None:
            names.append("flaggems")
        return names

    def impl(self, backend: str) -> Callable:
        """The implementation for a concrete backend name (not 'auto')."""
        if backend == "triton" and self.triton is not None:
            return self.triton
        if backend == "reference":
            return self.reference
        if backend == "flaggems" and self.flaggems is not None:
            fn = _flaggems_fn(self.flaggems)
            if fn is not None:
                return fn
        raise ValueError(f"op '{self.name}' has no '{backend}' backend (has: {', '.join(self.backends())})")


_OPS: dict[str, OpEntry] = {}
_ATEN: dict[str, Callable] = {}  # "aten::name[.overload]" -> our implementation with ATen's signature
_local = threading.local()


def register_aten(aten_name: str, fn: Callable) -> None:
    """Offer `fn` (same signature as the ATen op) to `flagstack.ops.enable()` for CUDA tensors.

    `fn` may return NotImplemented for a case our kernel does not cover; ATen's own kernel runs then.
    """
    if aten_name in _ATEN:
        raise ValueError(f"ATen override '{aten_name}' is registered twice")
    _ATEN[aten_name] = fn


def aten_overrides() -> dict[str, Callable]:
    """Every ATen override offered by the op files, by ATen name."""
    return dict(_ATEN)


def register(name: str, *, reference: Callable, triton: Callable | None = None,
             flaggems: str | None = None, validate: Callable | None = None,
             bench_case: Callable[..., BenchCase] | None = None) -> Callable:
    """Register an op and return its public dispatching function."""
    if name in _OPS:
        raise ValueError(f"op '{name}' is registered twice")
    entry = OpEntry(name, reference, triton, flaggems, validate, bench_case,
                    (reference.__doc__ or "").strip().splitlines()[0] if reference.__doc__ else "")
    _OPS[name] = entry

    @functools.wraps(reference)
    def op(*args: Any, **kwargs: Any) -> Any:
        if entry.validate is not None:
            entry.validate(*args, **kwargs)
        return entry.impl(resolve_backend(args, entry))(*args, **kwargs)

    op.__name__ = name
    op.entry = entry  # type: ignore[attr-defined]
    return op


def get(name: str) -> OpEntry:
    """The registry entry of an op; ValueError names the known ops if it is missing."""
    if name not in _OPS:
        raise ValueError(f"unknown op '{name}'; known ops: {', '.join(sorted(_OPS))}")
    return _OPS[name]


def all_ops() -> list[OpEntry]:
    """Every registered op, sorted by name."""
    return [_OPS[k] for k in sorted(_OPS)]


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got '{name}'")
    return name


@functools.lru_cache(maxsize=1)
def _env_backend() -> str:
    # read once: an os.environ lookup cost ~2 us per op call, a third of the registry's dispatch time
    return _check_backend(os.environ.get("FLAGSTACK_BACKEND", "auto").strip().lower() or "auto")


def get_backend() -> str:
    """The backend asked for now: Python override, else FLAGSTACK_BACKEND (read at the first op call),
    else 'auto'."""
    override = getattr(_local, "backend", None)
    return _env_backend() if override is None else override


def set_backend(name: str | None) -> None:
    """Force a backend for this thread ('auto', 'triton', 'reference', 'flaggems'); None clears it."""
    _local.backend = None if name is None else _check_backend(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of `set_backend`."""
    previous = getattr(_local, "backend", None)
    set_backend(name)
    try:
        yield
    finally:
        _local.backend = previous


def resolve_backend(args: tuple, entry: OpEntry) -> str:
    """The concrete backend for a call: 'auto' becomes triton on CUDA tensors, else reference."""
    backend = get_backend()
    if backend != "auto":
        return backend
    if entry.triton is not None:
        for a in args:  # a plain loop: a generator under any() cost more than the check itself
            if isinstance(a, torch.Tensor) and a.is_cuda:
                return "triton"
    return "reference"


@functools.lru_cache(maxsize=None)
def _flaggems_fn(path: str) -> Callable | None:
    """Look up a FlagGems function by dotted path; None if FlagGems is not importable."""
    try:
        obj: Any = importlib.import_module("flag_gems")
    except Exception:  # not installed, or no GPU for its import-time probing
        return None
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
