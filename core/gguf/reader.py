"""A fast GGUF reader: metadata as Python values, tensors as views of the memory-mapped file.

gguf-py's GGUFReader builds numpy views for every part of every field, which takes 2-3 s
on a tokenizer of 49k tokens and 49k merges; this reads the same header in a tenth of
that, which is most of a server's cold start. Format: ../shared/REFERENCE.md (GGUF v2/v3,
little-endian): magic, version, tensor count, KV count, KVs, tensor infos, aligned data.
"""

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...kernels.ggml_dequant import dequantize_ggml
from ..errors import ModelError

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32

# GGUF value type -> struct format of a scalar (8: string, 9: array are handled apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}  # fmt: skip

# ggml type id -> (name, elements per block, bytes per block), as in ggml.h / gguf-py constants
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}  # fmt: skip


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # torch order (rows first): GGUF's dims reversed
    type_id: int
    type_name: str
    data: np.ndarray  # uint8 bytes of the tensor, a view of the mapped file

    @property
    def num_elements(self) -> int:
        return int(np.prod(self.shape))

    def dequantize(self) -> np.ndarray:
        """float32, writable, in torch order."""
        return dequantize_ggml(self.data, self.type_id, self.type_name, self.shape)


class GGUFFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read {self.path}: {e}") from None
        self._buf = memoryview(self._map)
        self._pos = 0
        try:
            self._parse()
        except (struct.error, UnicodeDecodeError, IndexError, ValueError) as e:
            raise ModelError(f"{self.path} is not a valid GGUF file ({e})") from None

    def _parse(self) -> None:
        if bytes(self._buf[:4]) != _MAGIC:
            raise ValueError("bad magic")
        self._pos = 4
        self.version = self._scalar("I")
        if self.version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {self.version}")
        n_tensors, n_kv = self._scalar("Q"), self._scalar("Q")
        self.fields: dict[str, object] = {}
        for _ in range(n_kv):
            key = self._string()
            self.fields[key] = self._value(self._scalar("I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = struct.unpack_from(f"<{self._scalar('I')}Q", self._buf, self._pos)
            self._pos += 8 * len(dims)
            infos.append((name, dims, self._scalar("I"), self._scalar("Q")))
        alignment = int(self.fields.get("general.alignment", _DEFAULT_ALIGNMENT))
        start = -(-self._pos // alignment) * alignment
        data = np.frombuffer(self._map, dtype=np.uint8)
        self.tensors: list[GGUFTensor] = []
        for name, dims, type_id, offset in infos:
            if type_id not in GGML_TYPES:
                raise ValueError(f"tensor {name} has unknown ggml type {type_id}")
            type_name, block, block_bytes = GGML_TYPES[type_id]
            count = int(np.prod(dims)) if dims else 1
            if count % block:
                raise ValueError(
                    f"tensor {name}: {count} elements is not a whole number of {type_name} blocks"
                )
            size = count // block * block_bytes
            begin = start + offset
            if begin + size > len(data):
                raise ValueError(f"tensor {name} runs past the end of the file")
            shape = tuple(int(d) for d in reversed(dims))
            self.tensors.append(GGUFTensor(name, shape, type_id, type_name, data[begin : begin + size]))

    def _scalar(self, fmt: str):
        (value,) = struct.unpack_from("<" + fmt, self._buf, self._pos)
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._scalar("Q")
        text = str(self._buf[self._pos : self._pos + n], "utf-8")
        self._pos += n
        return text

    def _value(self, vtype: int):
        if vtype == 8:
            return self._string()
        if vtype == 9:
            item_type, n = self._scalar("I"), self._scalar("Q")
            if item_type == 8:
                return self._strings(n)
            if item_type in _NUMPY:
                dtype = np.dtype(_NUMPY[item_type]).newbyteorder("<")
                values = np.frombuffer(self._buf, dtype=dtype, count=n, offset=self._pos)
                self._pos += n * dtype.itemsize
                return values.tolist()
            return [self._value(item_type) for _ in range(n)]  # arrays of arrays
        if vtype in _SCALARS:
            return self._scalar(_SCALARS[vtype])
        raise ValueError(f"unknown GGUF value type {vtype}")

    def _strings(self, n: int) -> list[str]:
        # The hot loop of a tokenizer's 100k strings: locals and one unpack per string.
        buf, pos, out = self._buf, self._pos, []
        unpack = struct.Struct("<Q").unpack_from
        append = out.append
        for _ in range(n):
            (length,) = unpack(buf, pos)
            pos += 8
            append(str(buf[pos : pos + length], "utf-8"))
            pos += length
        self._pos = pos
        return out
