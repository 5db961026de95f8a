"""The FlagOS challenge operators: one file per op (kernel -> wrapper -> reference -> ATen adapters
-> registry entry). Importing this package registers them and offers their ATen overrides to
`flagstack.ops.enable()`."""
from flagstack.ops.challenge.asinh import asinh
from flagstack.ops.challenge.avg_pool3d import avg_pool3d
from flagstack.ops.challenge.chunk_gated_delta_rule import chunk_gated_delta_rule
from flagstack.ops.challenge.conv_transpose2d import conv_transpose2d
from flagstack.ops.challenge.cosh import cosh
from flagstack.ops.challenge.ctc_loss import ctc_loss
from flagstack.ops.challenge.gcd import gcd
from flagstack.ops.challenge.grid_sample import grid_sample
from flagstack.ops.challenge import grid_sample_backward  # noqa: F401  (registers the ATen backward)
from flagstack.ops.challenge.leaky_relu import leaky_relu
from flagstack.ops.challenge.log10 import log10
from flagstack.ops.challenge.logaddexp import logaddexp
from flagstack.ops.challenge.max_pool3d import max_pool3d
from flagstack.ops.challenge.median import median
from flagstack.ops.challenge.pixel_shuffle import pixel_shuffle, pixel_unshuffle
from flagstack.ops.challenge.roll import roll
from flagstack.ops.challenge.scatter_reduce import scatter_reduce
from flagstack.ops.challenge.smooth_l1_loss import smooth_l1_loss
from flagstack.ops.challenge.svd import svd
from flagstack.ops.challenge.tril import tril
from flagstack.ops.challenge.upsample_nearest2d import upsample_nearest2d

__all__ = ["asinh", "avg_pool3d", "chunk_gated_delta_rule", "conv_transpose2d", "cosh", "ctc_loss", "gcd",
           "grid_sample", "leaky_relu", "log10", "logaddexp", "max_pool3d", "median", "pixel_shuffle",
           "pixel_unshuffle", "roll", "scatter_reduce", "smooth_l1_loss", "svd", "tril", "upsample_nearest2d"]
