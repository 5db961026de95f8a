"""flagstack.ops: Triton operators, each with a PyTorch reference, picked per call by the registry."""
from flagstack.ops import interpreter_compat  # noqa: F401  (first: makes TRITON_INTERPRET=1 runs match the GPU)
from flagstack.ops import attention, challenge
from flagstack.ops.activation import gelu, gelu_and_mul, silu, silu_and_mul
from flagstack.ops.argmax import argmax
from flagstack.ops.argmax_logsumexp import argmax_logsumexp
from flagstack.ops.aten import disable, enable, is_enabled, use_aten
from flagstack.ops.embedding import embedding
from flagstack.ops.gemv import gemv, silu_mul_gemv
from flagstack.ops.registry import all_ops, get, get_backend, set_backend, use_backend
from flagstack.ops.qk_norm_rope import qk_norm_rope
from flagstack.ops.rms_norm import add_rms_norm, rms_norm
from flagstack.ops.rotary import rope_cos_sin_cache, rotary_embedding
from flagstack.ops.sampling import compute_logprobs, sample
from flagstack.ops.softmax import log_softmax, softmax

__all__ = ["attention", "challenge", "all_ops", "get", "get_backend", "set_backend", "use_backend", "rms_norm",
           "add_rms_norm", "silu_and_mul", "gelu_and_mul", "silu", "gelu",
           "rotary_embedding", "rope_cos_sin_cache", "qk_norm_rope", "embedding",
           "softmax", "log_softmax", "argmax", "argmax_logsumexp", "gemv", "silu_mul_gemv", "sample",
           "compute_logprobs", "enable", "disable", "is_enabled", "use_aten"]
