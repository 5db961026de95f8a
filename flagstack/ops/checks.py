"""Argument checks shared by the op wrappers: each raises ValueError naming the argument."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_tensor(name: str, t: object, *, dtypes: tuple = FLOAT_DTYPES, min_dim: int = 1,
                 max_dim: int | None = None) -> torch.Tensor:
    """Raise ValueError unless `t` is a tensor of an allowed dtype and rank."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must have dtype in ({allowed}), got {str(t.dtype).replace('torch.', '')}")
    if t.dim() < min_dim or (max_dim is not None and t.dim() > max_dim):
        want = f"{min_dim}" if max_dim == min_dim else f">= {min_dim}" if max_dim is None else f"{min_dim}..{max_dim}"
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(t.shape)}")
    return t


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise ValueError if the named tensors are not all on one device."""
    first = None
    for t in tensors.values():  # the common all-on-one-device case with no dict or set built per op call
        if isinstance(t, torch.Tensor):
            if first is None:
                first = t.device
            elif t.device != first:
                listing = ", ".join(f"{n} on {t.device}" for n, t in tensors.items() if isinstance(t, torch.Tensor))
                raise ValueError(f"tensors must be on one device: {listing}")


def check_last_dim(name: str, t: torch.Tensor, size: int, what: str) -> None:
    """Raise ValueError unless t's last dimension equals `size` (the size of `what`)."""
    if t.shape[-1] != size:
        raise ValueError(f"{name} last dimension must equal {what} ({size}), got shape {tuple(t.shape)}")


def rows_view(x: torch.Tensor) -> torch.Tensor:
    """View x as [rows, last_dim] with a unit stride on the last dim (copies only if it must)."""
    if x.dim() == 2 and x.stride(1) == 1:  # already one: no reshape call (host time counts at one row)
        return x
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x.reshape(-1, x.shape[-1])
