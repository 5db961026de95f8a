"""Reading a GGUF file: metadata and tensor index with `struct` (fast), tensors dequantized by `gguf`.

`gguf.GGUFReader` builds a numpy memmap view per metadata element; the embedded SmolLM2 file has
~150k of them (vocabulary and merges), which costs 5-9 s on 2 cores. Parsing the header with
`struct` from one bytes read takes ~0.1 s. Tensor data stays memory-mapped and is dequantized one
tensor at a time with `gguf.quants.dequantize`.

Layout (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor count, u64 kv count,
the key/value pairs, then per tensor: name, u32 n_dims, u64 dims (innermost first), u32 ggml type,
u64 offset into the data section; the data section starts at the next `general.alignment` boundary.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
            12: "<d"}
_STRING, _ARRAY = 8, 9
_HEADER_CHUNK = 1 << 20  # read the header in 1 MiB steps: it is small next to the tensors


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (outermost first)
    ggml_type: int
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclass
class GGUFFile:
    """The parsed header of a GGUF file: metadata values and where each tensor's bytes are."""

    path: str
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensorInfo] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """Metadata value `<architecture>.<key>`, e.g. arch_value("block_count")."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def load_tensor(self, name: str) -> torch.Tensor:
        """One tensor, dequantized to float32 (or its integer type), in torch shape order."""
        import gguf  # heavy import, only needed when tensors are read

        info = self.tensors[name]
        qtype = gguf.GGMLQuantizationType(info.ggml_type)
        raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=info.offset, shape=(info.nbytes,))
        rows = math.prod(info.shape[:-1])
        values = np.ascontiguousarray(gguf.quants.dequantize(np.asarray(raw).reshape(rows, -1), qtype))
        if not values.flags.writeable:  # plain float types come back as views of the read-only map
            values = values.copy()
        return torch.from_numpy(values.reshape(info.shape))

    def check_dequantizable(self) -> None:
        """ValueError naming the first tensor whose quantization type `gguf` cannot dequantize."""
        import gguf

        for qtype in sorted({info.ggml_type for info in self.tensors.values()}):
            gtype = gguf.GGMLQuantizationType(qtype)
            try:  # one all-zero block of the type, as a probe
                gguf.quants.dequantize(np.zeros((1, gguf.GGML_QUANT_SIZES[gtype][1]), np.uint8), gtype)
            except NotImplementedError:
                name = next(i.name for i in self.tensors.values() if i.ggml_type == qtype)
                raise ValueError(f"{self.path}: tensor {name} uses quantization type {gtype.name}, "
                                 "which cannot be dequantized") from None


class _Cursor:
    """Sequential little-endian reads from a file, refilling a buffer as it goes."""

    def __init__(self, handle) -> None:
        self.handle, self.buf, self.pos, self.base = handle, b"", 0, 0

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            self.base += self.pos
            self.buf = self.buf[self.pos:] + self.handle.read(max(n, _HEADER_CHUNK))
            self.pos = 0
            if n > len(self.buf):
                raise ValueError("GGUF file is truncated (header ends early)")

    def tell(self) -> int:
        return self.base + self.pos

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self._need(size)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        self._need(n)
        text = self.buf[self.pos:self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return text

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if item_type in _SCALARS:  # bulk read: one struct call for the whole array
                fmt = f"<{count}{_SCALARS[item_type][1]}"
                size = struct.calcsize(fmt)
                self._need(size)
                items = list(struct.unpack_from(fmt, self.buf, self.pos))
                self.pos += size
                return items
            return [self.value(item_type) for _ in range(count)]
        if vtype not in _SCALARS:
            raise ValueError(f"GGUF metadata has an unknown value type {vtype}")
        return self.scalar(_SCALARS[vtype])


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse a GGUF file's metadata and tensor index; FileNotFoundError / ValueError if it is not one."""
    import gguf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as handle:
        if handle.read(4) != _MAGIC:
            raise ValueError(f"{path} is not a GGUF file (bad magic)")
        cur = _Cursor(handle)
        cur.base = 4
        version = cur.scalar("<I")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.scalar("<I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
            infos.append((name, tuple(reversed(dims)), cur.scalar("<I"), cur.scalar("<Q")))
        alignment = int(metadata.get("general.alignment", 32))
        data_start = -(-cur.tell() // alignment) * alignment
    file_size = os.path.getsize(path)
    result = GGUFFile(path, metadata)
    for name, shape, ggml_type, offset in infos:
        try:
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise ValueError(f"{path}: tensor {name} has an unknown ggml type {ggml_type}") from None
        nbytes = math.prod(shape) // block * type_size
        if data_start + offset + nbytes > file_size:
            raise ValueError(f"{path}: tensor {name} lies past the end of the file (truncated?)")
        result.tensors[name] = GGUFTensorInfo(name, shape, ggml_type, data_start + offset, nbytes)
    return result
