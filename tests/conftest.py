"""Test setup: without CUDA, Triton kernels run through the interpreter (set before any import)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
