"""TensorFlow.js weights: read them from a model.json, quantize, pack and cut into shards.

Plain numpy, no TensorFlow: a tfjs input is re-quantized and re-sharded without a TensorFlow
round trip. Quantization and packing follow tensorflowjs 4.22 (`quantization.py`,
`write_weights.py`) step by step, so that the same weights give the same bytes.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bundler.errors import ModelError

# tfjs weight dtypes and how they are stored; strings are length-prefixed UTF-8.
_STORED: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype("bool"),
    "uint8": np.dtype("uint8"),
    "uint16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
    "complex64": np.dtype("<c8"),
}
_QUANTIZED: dict[str, np.dtype[Any]] = {
    "uint8": np.dtype("uint8"),
    "uint16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
}
_STRING_LENGTH: np.dtype[Any] = np.dtype("<u4")


@dataclass(frozen=True)
class Weight:
    """One tensor of a model, at its original dtype (never quantized)."""

    name: str
    array: np.ndarray[Any, Any]


@dataclass(frozen=True)
class Packed:
    """Weights as written: the manifest for model.json and the shard files it names."""

    manifest: list[dict[str, Any]]
    shards: tuple[tuple[str, bytes], ...]

    @property
    def weight_bytes(self) -> int:
        """Bytes of all shards together."""
        return sum(len(data) for _, data in self.shards)


# --- reading --------------------------------------------------------------------------------


def read_groups(model_json: Path, manifest: Any) -> list[list[Weight]]:
    """Read and decode every weight group named by a model.json's weightsManifest."""
    if not isinstance(manifest, list):
        raise ModelError(f"{model_json}: weightsManifest is not a list")
    groups = []
    for gi, group in enumerate(manifest):
        try:
            paths = list(group["paths"])
            specs = list(group["weights"])
        except (TypeError, KeyError) as err:
            raise ModelError(f"{model_json}: weightsManifest[{gi}] lacks {err}") from None
        buffers = []
        for rel in paths:
            shard = model_json.parent / rel
            try:
                buffers.append(shard.read_bytes())
            except FileNotFoundError:
                raise ModelError(
                    f"{model_json}: names the weight file {rel!r}, which does not exist "
                    f"({shard}); copy every shard beside model.json"
                ) from None
        groups.append(decode(b"".join(buffers), specs, f"{model_json}: weightsManifest[{gi}]"))
    return groups


def decode(data: bytes, specs: Sequence[Any], where: str) -> list[Weight]:
    """Decode one group's concatenated bytes into weights, dequantizing as tfjs does."""
    out = []
    offset = 0
    for spec in specs:
        try:
            name = str(spec["name"])
            shape = [int(d) for d in spec["shape"]]
            dtype = str(spec["dtype"])
        except (TypeError, KeyError, ValueError) as err:
            raise ModelError(f"{where}: a weight entry is malformed ({err!r})") from None
        count = math.prod(shape)
        if dtype == "string":
            array, offset = _decode_strings(data, offset, count, where, name)
            out.append(Weight(name, array.reshape(shape)))
            continue
        quant = spec.get("quantization")
        if dtype not in _STORED:
            raise ModelError(f"{where}: weight {name!r} has unsupported dtype {dtype!r}")
        stored = _STORED[dtype] if quant is None else _quantized_storage(quant, where, name)
        end = offset + count * stored.itemsize
        if end > len(data):
            raise ModelError(
                f"{where}: the weight files hold {len(data)} bytes but weight {name!r} "
                f"needs bytes {offset} to {end}; a shard is missing or cut short"
            )
        raw = np.frombuffer(data, dtype=stored, count=count, offset=offset).reshape(shape)
        offset = end
        array = raw if quant is None else _dequantize(raw, quant, dtype)
        out.append(
            Weight(name, np.ascontiguousarray(array, dtype=_STORED[dtype].newbyteorder("=")))
        )
    if offset != len(data):
        raise ModelError(
            f"{where}: the weight files hold {len(data)} bytes but the manifest describes {offset}"
        )
    return out


def _quantized_storage(quant: Any, where: str, name: str) -> np.dtype[Any]:
    """The stored dtype of a quantized weight, after checking its quantization entry."""
    if not isinstance(quant, dict) or quant.get("dtype") not in _QUANTIZED:
        dtype = quant.get("dtype") if isinstance(quant, dict) else quant
        raise ModelError(f"{where}: weight {name!r} has unsupported quantization dtype {dtype!r}")
    if quant["dtype"] != "float16":
        for key in ("min", "scale"):
            if not isinstance(quant.get(key), int | float):
                raise ModelError(
                    f"{where}: weight {name!r} has a malformed quantization entry (no {key!r})"
                )
    return _QUANTIZED[quant["dtype"]]


def dequantize(data: np.ndarray[Any, Any], quant: dict[str, Any]) -> np.ndarray[Any, Any]:
    """The float32 values a tfjs runtime reads back from `quantize`'s output."""
    result: np.ndarray[Any, Any] = _dequantize(data, quant, "float32")
    return result


def _dequantize(raw: np.ndarray[Any, Any], quant: dict[str, Any], dtype: str) -> Any:
    if quant["dtype"] == "float16":
        return raw.astype(np.float32)
    # Older converters wrote no original_dtype: the entry's own dtype is the original one.
    original = np.dtype(quant.get("original_dtype", dtype))
    values = raw * float(quant["scale"]) + float(quant["min"])
    if original == np.int32:
        return np.round(values).astype(np.int32)
    return values.astype(original)


def _decode_strings(
    data: bytes, offset: int, count: int, where: str, name: str
) -> tuple[np.ndarray[Any, Any], int]:
    values = []
    for _ in range(count):
        if offset + 4 > len(data):
            raise ModelError(f"{where}: string weight {name!r} runs past the end of its shards")
        length = int(np.frombuffer(data, _STRING_LENGTH, 1, offset)[0])
        offset += 4
        if offset + length > len(data):
            raise ModelError(f"{where}: string weight {name!r} runs past the end of its shards")
        values.append(data[offset : offset + length])
        offset += length
    return np.array(values, dtype=object), offset


# --- quantizing -----------------------------------------------------------------------------


def dtype_for_weights(
    names: Sequence[str], dtype_map: Sequence[tuple[str, Sequence[str]]]
) -> dict[str, str]:
    """Map each weight name matched by a pattern to its quantization dtype.

    A pattern of "*" acts as the fallthrough: it takes the weights no other pattern named,
    so `{uint8 = ["dense*"], float16 = ["*"]}` means what it says.
    """
    chosen: dict[str, str] = {}
    fallthrough = None
    for dtype, patterns in dtype_map:
        for pattern in patterns:
            if pattern == "*":
                if fallthrough not in (None, dtype):
                    raise ModelError(f'"*" is given to both {fallthrough} and {dtype}')
                fallthrough = dtype
                continue
            for name in fnmatch.filter(names, pattern):
                if chosen.get(name, dtype) != dtype:
                    raise ModelError(
                        f"weight {name!r} matches patterns for both {chosen[name]} and {dtype}"
                    )
                chosen[name] = dtype
    if fallthrough is not None:
        for name in names:
            chosen.setdefault(name, fallthrough)
    return chosen


def quantize(
    array: np.ndarray[Any, Any], dtype: str
) -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
    """Quantize a float32 array as tensorflowjs does; return the data and its manifest entry."""
    if dtype == "float16":
        return array.astype(np.float16), {"dtype": "float16"}
    target = _QUANTIZED[dtype]
    min_val = array.min().astype(np.float64)
    max_val = array.max().astype(np.float64)
    if min_val == max_val:
        return np.zeros_like(array, dtype=target), {"min": min_val, "scale": 1.0, "dtype": dtype}
    quant_max = np.iinfo(target).max
    scale = (max_val - min_val) / quant_max
    # Nudge the range so that 0.0 maps to an integer (zero padding must stay exact).
    if min_val <= 0 <= max_val:
        nudged_min = -np.round((0 - min_val) / scale) * scale
        nudged_max = quant_max * scale + nudged_min
    else:
        nudged_min, nudged_max = min_val, max_val
    data = np.round((array.clip(nudged_min, nudged_max) - nudged_min) / scale).astype(target)
    return data, {"min": nudged_min, "scale": scale, "dtype": dtype}


# --- packing --------------------------------------------------------------------------------


def pack(
    groups: Sequence[Sequence[Weight]],
    dtype_map: Sequence[tuple[str, Sequence[str]]],
    shard_bytes: int,
) -> Packed:
    """Quantize, concatenate each group and cut it every `shard_bytes` bytes."""
    names = [w.name for group in groups for w in group]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ModelError(f"two weights are both named {dup!r}")
    chosen = dtype_for_weights(names, dtype_map)
    manifest = []
    shards: list[tuple[str, bytes]] = []
    for gi, group in enumerate(groups):
        entries = []
        chunks = []
        for w in group:
            entry: dict[str, Any] = {"name": w.name, "shape": list(w.array.shape)}
            if w.array.dtype == object:
                entry["dtype"] = "string"
                chunks.append(_encode_strings(w.array))
            else:
                dtype = w.array.dtype.name
                entry["dtype"] = dtype
                data = w.array
                # Only float32 tensors are quantized, as in tensorflowjs.
                if w.name in chosen and dtype == "float32" and w.array.size:
                    data, info = quantize(w.array, chosen[w.name])
                    entry["quantization"] = {**info, "original_dtype": dtype}
                chunks.append(
                    np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes()
                )
            entries.append(entry)
        stream = b"".join(chunks)
        count = max(1, math.ceil(len(stream) / shard_bytes)) if stream else 0
        paths = []
        for si in range(count):
            name = f"group{gi + 1}-shard{si + 1}of{count}.bin"
            paths.append(name)
            shards.append((name, stream[si * shard_bytes : (si + 1) * shard_bytes]))
        manifest.append({"paths": paths, "weights": entries})
    return Packed(manifest, tuple(shards))


def _encode_strings(array: np.ndarray[Any, Any]) -> bytes:
    parts = []
    for value in array.reshape(-1).tolist():
        encoded = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(np.array(len(encoded), _STRING_LENGTH).tobytes() + encoded)
    return b"".join(parts)


def param_count(groups: Sequence[Sequence[Weight]]) -> int:
    """How many numbers the weights hold."""
    return sum(int(w.array.size) for group in groups for w in group)
