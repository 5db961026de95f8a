"""Tokenizers: HF tokenizer files of a model directory, or the vocabulary + chat template in a GGUF.

Building a tokenizer from GGUF metadata through transformers re-parses the whole file (4-8 s on
2 cores), so the result is saved as tokenizer.json etc. under a cache folder keyed by the file's
path, size and mtime, and later loads take ~0.3 s. FLAGSTACK_CACHE overrides ~/.cache/flagstack.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

from transformers import AutoTokenizer, PreTrainedTokenizerFast

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def cache_dir() -> Path:
    return Path(os.environ.get("FLAGSTACK_CACHE") or Path.home() / ".cache" / "flagstack")


def load_tokenizer(model_dir: str | os.PathLike) -> PreTrainedTokenizerFast | None:
    """The HF tokenizer saved in `model_dir`, or None when the directory has no tokenizer files."""
    if not any((Path(model_dir) / name).is_file() for name in _TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(os.fspath(model_dir))


def load_gguf_tokenizer(gguf_path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """The tokenizer (with chat template) described by a GGUF file's metadata, cached on disk."""
    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_dir() / "tokenizers" / key
    if (cached / "tokenizer.json").is_file():
        try:
            return PreTrainedTokenizerFast.from_pretrained(os.fspath(cached))
        except Exception:  # e.g. written by another transformers version: rebuild it below
            shutil.rmtree(cached, ignore_errors=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(os.fspath(path.parent), gguf_file=path.name)
    partial = cached.with_name(f"{key}.tmp{os.getpid()}")
    try:  # write aside, then rename: a concurrent reader never sees half a cache entry
        tokenizer.save_pretrained(os.fspath(partial))
        os.replace(partial, cached)
    except OSError:  # read-only home, or another process won the rename: only slower next time
        shutil.rmtree(partial, ignore_errors=True)
    return tokenizer


@functools.lru_cache(maxsize=8)
def fast_decoder(tokenizer) -> Callable[..., str]:
    """`tokenizer.decode(ids, skip_special_tokens=...)` for the per-token paths (streaming, stop strings):
    the Rust tokenizer's own decode where the transformers wrapper would only add its per-call conversions
    (a third of an event loop's time per streamed token), i.e. a fast tokenizer without space clean-up."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return tokenizer.decode
    return lambda ids, skip_special_tokens=False: backend.decode(ids, skip_special_tokens=skip_special_tokens)
