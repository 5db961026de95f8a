"""Make Triton 3.6's interpreter (TRITON_INTERPRET=1) behave as the GPU does in two places.

1. Loops bounded by scalar kernel arguments: the interpreter holds every scalar as a 1-element numpy
   array and converts it to a Python int with `int(array)`, which numpy >= 2.4 refuses for arrays that
   are not 0-dimensional. So `for start in range(0, n_cols, BLOCK)` fails on CPU although it compiles
   fine for a GPU. This swaps in a conversion through the single element.
2. fp32 -> bf16 casts (`x.to(tl.bfloat16)`): the interpreter truncates the mantissa, the GPU rounds to
   nearest even. Truncation biases every rounded value toward zero, enough to push a bf16 dot product of
   rounded activations past the tolerance (silu_and_mul's bf16 output differed from round-to-nearest in
   4,884 of 9,728 elements). The cast here rounds to nearest even; NaN stays NaN.
Nothing changes unless the interpreter is on.
"""
from __future__ import annotations

import os

import numpy as np


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

    builder = interpreter.InterpreterBuilder
    original_cast = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar != interpreter.tl.float32 or dst_type.scalar != interpreter.tl.bfloat16:
            return original_cast(self, src, dst_type)
        bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        rounded = np.where(np.isnan(src.data), (bits >> 16).astype(np.uint16) | 0x40, rounded)  # a quiet NaN
        return interpreter.TensorHandle(rounded, dst_type.scalar)

    builder.cast_impl = cast_impl


install()
