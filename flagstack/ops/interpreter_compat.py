"""Make Triton 3.6's interpreter (TRITON_INTERPRET=1) run loops bounded by scalar kernel arguments.

The interpreter holds every scalar as a 1-element numpy array and converts it to a Python int with
`int(array)`, which numpy >= 2.4 refuses for arrays that are not 0-dimensional. So
`for start in range(0, n_cols, BLOCK)` fails on CPU although it compiles fine for a GPU. This swaps
in a conversion through the single element. Nothing changes unless the interpreter is on.
"""
from __future__ import annotations

import os


def install() -> None:
    """Patch the interpreter's scalar-to-int conversion (idempotent; no-op without TRITON_INTERPRET=1)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "flagstack_patched", False):
        return

    def patch_lang_tensor(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor.flagstack_patched = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patch_lang_tensor


install()
