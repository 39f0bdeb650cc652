"""Minimal, dependency-free safetensors writer/reader (plain torch + numpy).

Format: 8-byte little-endian u64 header length N, then N bytes of JSON header
(padded with spaces to a multiple of 8), then the raw little-endian tensor data.
Tensors are laid out contiguously in sorted-name order; the header lists
"__metadata__" first and then the tensors in sorted-name order.
"""
import json
import struct

import numpy as np
import torch

_DTYPES = {
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F64": (torch.float64, 8),
    "I32": (torch.int32, 4),
    "I64": (torch.int64, 8),
}
_TORCH_TO_ST = {v[0]: k for k, v in _DTYPES.items()}


def _tensor_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16: reinterpret the bits as int16.
        arr = t.view(torch.int16).numpy()
    else:
        arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def serialize(tensors, metadata=None):
    """Return the bytes of a safetensors file holding `tensors` (name -> torch.Tensor)."""
    header = {"__metadata__": dict(metadata or {"format": "pt"})}
    blobs = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _TORCH_TO_ST:
            raise ValueError(f"unsupported dtype {t.dtype} for {name}")
        b = _tensor_bytes(t)
        header[name] = {
            "dtype": _TORCH_TO_ST[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [off, off + len(b)],
        }
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (-len(hj)) % 8
    hj += b" " * pad
    return struct.pack("<Q", len(hj)) + hj + b"".join(blobs)


def save_file(tensors, path, metadata=None):
    with open(path, "wb") as f:
        f.write(serialize(tensors, metadata))


def load_file(path):
    """Read a safetensors file into a dict name -> torch.Tensor (original dtype)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt, size = _DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        raw = data[base + b : base + e]
        shape = info["shape"]
        numel = int(np.prod(shape)) if shape else 1
        assert len(raw) == numel * size, name
        if dt == torch.bfloat16:
            arr = np.frombuffer(raw, dtype="<i2").copy()
            t = torch.from_numpy(arr).view(torch.bfloat16)
        else:
            npdt = {torch.float32: "<f4", torch.float16: "<f2", torch.float64: "<f8",
                    torch.int32: "<i4", torch.int64: "<i8"}[dt]
            t = torch.from_numpy(np.frombuffer(raw, dtype=npdt).copy())
        out[name] = t.reshape(shape)
    return out
