"""The inputs every check of a build runs a model on: the user's samples, or made-up inputs
that fit the model.

`models[].samples` names an `.npz` (one array per input name, or one array for a one-input
model) or an `.npy` (a one-input model), rows first; `samples_limit` keeps the first rows.
Without samples, inputs are made up from the model's own input specs, deterministically:
each input's dtype (float32 in [0, 1), int32 in 0–255 for an image-like input, small integers
otherwise, bool), every input of a multi-input model, and free sizes filled with sizes such
models accept (a batch of VERIFY_BATCH rows; IMAGE_SIDE for the sides of an image), or the
shapes given by `models[].input_shape`.

Every runtime's check (tfjs, TFLite, Keras) takes its inputs here, so all compare alike.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bundler.errors import ModelError
from bundler.manifest import ModelConfig, display_path

Array = np.ndarray[Any, Any]
Spec = tuple[str, Sequence[int | None], str]  # (input name, shape with None/-1 free, dtype)

VERIFY_BATCH = 2  # rows of made-up inputs
VERIFY_SEED = 20261122
# A free side of an image-like input: a common training size, and a multiple of 32, which
# models that halve their input five times (pose, detection) need.
IMAGE_SIDE = 224
# A free size elsewhere (a sequence length, a feature count).
OTHER_SIDE = 16
IMAGE_CHANNELS = (1, 3, 4)
INT_IMAGE_MAX = 256  # made-up int32 image pixels are in 0–255
INT_OTHER_MAX = 10
# Rows per call when a runtime predicts on many rows: bounded memory, full batches.
CHUNK_ROWS = 32


@dataclass(frozen=True)
class Inputs:
    """The arrays a check feeds the model, by input name, and where they came from."""

    arrays: tuple[tuple[str, Array], ...]
    made_up: bool  # True: made up from the specs; False: the user's samples
    chunk: int = CHUNK_ROWS  # rows per call (chunk_rows)

    def parts(self) -> Iterator[dict[str, Array]]:
        """The rows, `chunk` at a time, by input name (inputs in the model's order)."""
        for start in range(0, max(self.rows, 1), self.chunk):
            yield {name: a[start : start + self.chunk] for name, a in self.arrays}

    @property
    def rows(self) -> int:
        """Rows per input."""
        return int(self.arrays[0][1].shape[0]) if self.arrays and self.arrays[0][1].ndim else 0

    def describe(self) -> str:
        """How messages name them: "made-up inputs of shapes [[2, 8]] (float32)"."""
        shapes = [list(a.shape) for _, a in self.arrays]
        dtypes = ", ".join(dict.fromkeys(str(a.dtype) for _, a in self.arrays))
        what = "made-up inputs" if self.made_up else "the samples"
        return f"{what} of shapes {shapes} ({dtypes})"


def for_model(model: ModelConfig, specs: Sequence[Spec]) -> Inputs:
    """The model's samples when it has some, else made-up inputs that fit `specs`."""
    chunk = chunk_rows(specs)
    if model.samples is not None:
        return Inputs(load(model, specs), made_up=False, chunk=chunk)
    shapes = model.input_shape
    if shapes is not None and (
        len(shapes) != len(specs)
        or any(len(given) != len(spec[1]) for given, spec in zip(shapes, specs, strict=False))
    ):
        expected = "; ".join(f"{name}: {_shape_text(shape)}" for name, shape, _ in specs)
        raise ModelError(
            f"input_shape gives {[list(s) for s in shapes]}; the model's inputs are {expected}: "
            "give one shape per input, of the same rank"
        )
    return Inputs(made_up(specs, shapes), made_up=True, chunk=chunk)


def chunk_rows(specs: Sequence[Spec]) -> int:
    """Rows per call: the model's own batch size when it fixes one, else CHUNK_ROWS."""
    fixed = {int(shape[0]) for _, shape, _ in specs if shape and shape[0] is not None}
    fixed.discard(-1)
    return fixed.pop() if len(fixed) == 1 else CHUNK_ROWS


def made_up(
    specs: Sequence[Spec], shapes: Sequence[Sequence[int]] | None = None
) -> tuple[tuple[str, Array], ...]:
    """Deterministic inputs for `specs`: `shapes` when given (one per input), else the specs'
    shapes with free sizes filled."""
    rng = np.random.default_rng(VERIFY_SEED)
    result = []
    for i, (name, shape, dtype) in enumerate(specs):
        concrete = list(shapes[i]) if shapes is not None else fill(shape)
        image = _image_like(shape)
        array: Array
        if dtype == "bool":
            array = rng.random(size=concrete) < 0.5
        elif dtype == "int32":
            top = INT_IMAGE_MAX if image else INT_OTHER_MAX
            array = rng.integers(0, top, size=concrete).astype(np.int32)
        else:
            # Uniform in [0, 1): the range most image and feature inputs are scaled to.
            array = rng.random(size=concrete, dtype=np.float32)
        result.append((name, array))
    return tuple(result)


def fill(shape: Sequence[int | None]) -> list[int]:
    """A shape with its free sizes filled: the batch, an image's sides, anything else."""
    image = _image_like(shape)
    dims = []
    for axis, d in enumerate(shape):
        if d is not None and d >= 0:
            dims.append(int(d))
        elif axis == 0:
            dims.append(VERIFY_BATCH)
        elif image and axis in (1, 2):
            dims.append(IMAGE_SIDE)
        else:
            dims.append(OTHER_SIDE)
    return dims


def _image_like(shape: Sequence[int | None]) -> bool:
    """Rank 4 with 1, 3 or 4 channels last: [batch, height, width, channels]."""
    return len(shape) == 4 and shape[3] in IMAGE_CHANNELS


def load(model: ModelConfig, specs: Sequence[Spec]) -> tuple[tuple[str, Array], ...]:
    """The model's samples by input name, checked against `specs`; ModelError when they do
    not fit, naming the file, what it holds and what the model takes."""
    path = model.samples
    assert path is not None
    shown = display_path(path)
    arrays = _read(path, shown)
    expected = "; ".join(f"{name}: {_shape_text(shape)} {dtype}" for name, shape, dtype in specs)
    by_name = _by_input(arrays, specs, shown, expected)
    rows = None
    result = []
    for name, shape, dtype in specs:
        array = by_name[name]
        want = _shape_text(shape)
        if array.ndim != len(shape) or any(
            d is not None and d >= 0 and d != got
            for d, got in zip(shape[1:], array.shape[1:], strict=False)
        ):
            raise ModelError(
                f"{shown}: input {name!r} has shape {list(array.shape)}; the model takes "
                f"{want} (rows first)"
            )
        if array.shape[0] == 0:
            raise ModelError(f"{shown}: input {name!r} has no rows; the model takes {want}")
        if rows is not None and array.shape[0] != rows:
            raise ModelError(
                f"{shown}: input {name!r} has {array.shape[0]} rows where the others have "
                f"{rows}; every input needs one row per sample"
            )
        rows = array.shape[0]
        batch = shape[0] if shape else None
        if batch is not None and batch > 0 and rows % batch:
            raise ModelError(
                f"{shown}: input {name!r} has {rows} rows; the model takes batches of exactly "
                f"{batch}, so give a multiple of {batch}"
            )
        result.append((name, _as_dtype(array, dtype, name, shown)))
    limit = model.samples_limit
    if limit is not None:
        result = [(name, array[:limit]) for name, array in result]
    return tuple(result)


def _read(path: Path, shown: str) -> dict[str, Array]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"{shown}: cannot be read as .npy or .npz ({reason}); save samples with "
            "numpy.save or numpy.savez"
        ) from None
    if isinstance(loaded, np.ndarray):
        return {"": loaded}
    with loaded:
        arrays = {key: loaded[key] for key in loaded.files}
    if not arrays:
        raise ModelError(f"{shown}: the .npz holds no array")
    return arrays


def _by_input(
    arrays: dict[str, Array], specs: Sequence[Spec], shown: str, expected: str
) -> dict[str, Array]:
    names = [name for name, _, _ in specs]
    if len(arrays) == 1 and len(names) == 1:
        return {names[0]: next(iter(arrays.values()))}
    if "" in arrays:
        raise ModelError(
            f"{shown}: an .npy holds one array, and the model has {len(names)} inputs "
            f"({expected}); save an .npz with one array per input name"
        )
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ModelError(
            f"{shown}: no array named {', '.join(repr(n) for n in missing)} (found "
            f"{', '.join(repr(k) for k in arrays)}); the model's inputs are {expected}"
        )
    return {name: arrays[name] for name in names}


def _as_dtype(array: Array, dtype: str, name: str, shown: str) -> Array:
    kind = array.dtype.kind  # b bool, i/u integers, f floats
    if dtype == "int32" and kind in "iu":
        return array.astype(np.int32)
    if dtype == "bool" and kind == "b":
        return array
    if dtype == "float32" and kind in "fiu":
        return array.astype(np.float32)
    raise ModelError(f"{shown}: input {name!r} holds {array.dtype} values; the model takes {dtype}")


def _shape_text(shape: Sequence[int | None]) -> str:
    return (
        "["
        + ", ".join(
            "rows" if i == 0 else str(d) if d is not None and d >= 0 else "any"
            for i, d in enumerate(shape)
        )
        + "]"
    )
