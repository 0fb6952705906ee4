"""quantize = "auto": per weight, the most compact dtype such that the model's constraints
hold on its samples.

Candidates are judged in Python: each weight is quantized and dequantized with numpy exactly
as the bundle will store it (weights.quantize), and the converted model runs in TensorFlow
with those values (evaluate.py) on the samples, against the source model's outputs. Every
weight starts at uint8, the most compact. When that misses a constraint, the weights are
ranked by how coarse uint8 is for them (the quantization step against the spread of their
values: a few outliers stretch the range and blur the rest) per byte they hold, and a binary
search finds the fewest top-ranked weights that 16 bits (uint16 or float16, whichever stores
that weight more closely) must keep; failing that, the fewest kept float32 with the rest at
16 bits. About log2(weights) + 3 runs. The shipping runtime confirms the choice afterwards
(stage.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bundler.manifest import Constraints
from bundler.models import weights
from bundler.models.verify import Metrics, metrics

Array = np.ndarray[Any, Any]
Progress = Callable[[str], None]
Run = Callable[[Mapping[str, Array]], list[Array]]

BYTES = {"uint8": 1, "uint16": 2, "float16": 2, "none": 4}


@dataclass(frozen=True)
class Choice:
    """What the search chose, and what it measured for it."""

    dtypes: dict[str, str]  # float32 weight → "uint8" | "uint16" | "float16" | "none"
    weight_bytes: int  # of every weight, quantized or not
    metrics: Metrics
    runs: int  # candidates judged
    met: bool  # False: no candidate met every constraint; this is the best reached


def choose(
    groups: Sequence[Sequence[weights.Weight]],
    reference: Sequence[Array],
    run: Run,
    constraints: Constraints,
    say: Progress,
) -> Choice:
    """The most compact per-weight dtypes whose outputs meet `constraints` against `reference`."""
    every = [w for group in groups for w in group]
    floats = [w for w in every if w.array.dtype == np.float32]
    fixed_bytes = sum(w.array.nbytes for w in every if w.array.dtype != np.float32)
    stored: dict[tuple[str, str], Array] = {}

    def value(w: weights.Weight, dtype: str) -> Array:
        key = (w.name, dtype)
        if key not in stored:
            if dtype == "none":
                stored[key] = w.array
            else:
                data, entry = weights.quantize(w.array, dtype)
                stored[key] = weights.dequantize(data, entry).astype(np.float32)
        return stored[key]

    wide = {w.name: _closer_16(w, value) for w in floats}
    # The coarsest weights per byte first: 16 bits for a small, coarse tensor cost little.
    ranked = sorted(floats, key=lambda w: _coarseness(w) / max(w.array.size, 1), reverse=True)
    runs = 0

    def judge(table: dict[str, str]) -> tuple[Metrics, int]:
        nonlocal runs
        runs += 1
        feed = {w.name: value(w, table[w.name]) for w in floats}
        feed.update({w.name: w.array for w in every if w.array.dtype != np.float32})
        measured = metrics(run(feed), reference)
        size = fixed_bytes + sum(w.array.size * BYTES[table[w.name]] for w in floats)
        return measured, size

    def table(keep32: int, keep16: int) -> dict[str, str]:
        chosen = {}
        for i, w in enumerate(ranked):
            chosen[w.name] = "none" if i < keep32 else wide[w.name] if i < keep16 else "uint8"
        return chosen

    def accurate(m: Metrics) -> bool:
        return (
            constraints.min_top1 is None or (m.top1_agreement or 0.0) >= constraints.min_top1
        ) and (constraints.max_error is None or m.max_abs_error <= constraints.max_error)

    n = len(ranked)
    say(f"quantize auto: judging candidates on {_rows(reference)} sample rows, {n} weights")
    best = table(0, 0)
    best_m, best_size = judge(best)
    if not accurate(best_m) and n:
        m16, _ = judge(table(0, n))
        if accurate(m16):
            k = _fewest(lambda k: accurate(judge(table(0, k))[0]), 1, n)
            best = table(0, k)
        else:
            k = _fewest(lambda k: accurate(judge(table(k, n))[0]), 1, n)
            best = table(k, n)
        best_m, best_size = judge(best)
    met = accurate(best_m) and (constraints.max_bytes is None or best_size <= constraints.max_bytes)
    return Choice({w.name: best[w.name] for w in floats}, best_size, best_m, runs, met)


def meets(m: Metrics, constraints: Constraints) -> bool:
    """True when `m` meets the accuracy constraints (min_top1, max_error)."""
    top1 = constraints.min_top1
    error = constraints.max_error
    return (top1 is None or (m.top1_agreement or 0.0) >= top1) and (
        error is None or m.max_abs_error <= error
    )


def _fewest(ok: Callable[[int], bool], low: int, high: int) -> int:
    """The smallest k in [low, high] with ok(k), taking ok as monotone; high if none."""
    while low < high:
        middle = (low + high) // 2
        if ok(middle):
            high = middle
        else:
            low = middle + 1
    return high


def _coarseness(w: weights.Weight) -> float:
    """uint8's step for this weight against the spread of its values."""
    array = w.array
    spread = float(np.std(array))
    if array.size < 2 or spread == 0.0:
        return 0.0
    return float(np.max(array) - np.min(array)) / 255.0 / spread


def _closer_16(w: weights.Weight, value: Callable[[weights.Weight, str], Array]) -> str:
    """uint16 or float16, whichever stores the weight with the smaller largest error."""
    errors = {d: float(np.max(np.abs(value(w, d) - w.array))) for d in ("uint16", "float16")}
    return min(errors, key=lambda d: errors[d])


def _rows(reference: Sequence[Array]) -> int:
    return int(reference[0].shape[0]) if reference and reference[0].ndim else 1
