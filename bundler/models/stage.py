"""The model stage: every model of the manifest → verified ModelArtifacts.

fingerprint → (cache hit? reuse : convert → quantize + shard → cache) → verify in each tfjs
runtime the targets load the models with (results kept in the cache entry) → ModelArtifacts.
TensorFlow is imported only when a model must really be converted.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from bundler.errors import ModelError, VerifyError
from bundler.manifest import Config, ModelConfig, Quantize
from bundler.models import auto, cache, pack, samples
from bundler.models.artifacts import (
    BROTLI_SUFFIX,
    MODEL_JSON,
    ModelArtifacts,
    Shard,
    input_specs,
    shard_names,
    tensor_specs,
)
from bundler.models.cache import Cache, Entry
from bundler.models.convert import Converted
from bundler.models.sources import TFJS_GRAPH, TFJS_LAYERS
from bundler.models.verify import Check, Metrics, Runtime, judge, run, source_outputs

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

# Unquantized weights should match TensorFlow to rounding; more means something is wrong.
FLOAT_TOLERANCE = 1e-3


@dataclass
class Loaded:
    """The models of one build, each with its cache entry, and what it took to get them."""

    store: Cache  # the cache the models come through (and the export targets' files)
    entries: dict[str, Entry] = field(default_factory=dict)
    converted: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)  # reused, from the shared store
    warnings: list[str] = field(default_factory=list)


def load(config: Config, say: Progress, store: Cache | None = None) -> Loaded:
    """Every model's cache entry, converting those whose fingerprint is new."""
    store = store or cache.open_cache(config)
    loaded = Loaded(store)
    # One conversion serves every model of this build with the same source and format:
    # quantization and sharding come after it.
    conversions: dict[tuple[Any, ...], Converted] = {}
    for model in config.models:
        loaded.entries[model.name] = _entry(config, model, store, say, loaded, conversions)
        loaded.warnings += _widened(model, loaded.entries[model.name])
    return loaded


def _widened(model: ModelConfig, entry: Entry) -> list[str]:
    """A tfjs source whose weights are stored quantized, shipped wider by quantize = "none"."""
    dtypes = entry.meta.get("source_dtypes") or []
    if not model.quantize.is_none or not dtypes:
        return []
    stored = " and ".join(dtypes)
    keep = f'quantize = "{stored}"' if len(dtypes) == 1 else "a quantize table of those dtypes"
    return [
        f'model "{model.name}": its source stores {stored} weights, and quantize = "none" ships '
        f"them as float32, several times the bytes; set {keep} to keep them as they are"
    ]


def _stored_dtypes(model: ModelConfig) -> list[str]:
    """The quantization dtypes a tfjs source's weights are stored in (read once, converting)."""
    if model.input.kind not in (TFJS_GRAPH, TFJS_LAYERS):
        return []
    doc = json.loads(model.input.path.read_text(encoding="utf-8"))
    return sorted(
        {
            str(spec["quantization"].get("dtype"))
            for group in doc.get("weightsManifest", [])
            for spec in group.get("weights", [])
            if isinstance(spec.get("quantization"), dict)
        }
    )


def fingerprint(config: Config, model: ModelConfig) -> str:
    """The build cache's key for a model of this manifest: its inputs and the options."""
    options = {
        "shard_cap": config.shard_cap(model),
        "brotli_quality": config.project.brotli_quality,
    }
    return cache.fingerprint(model, options)


def _entry(
    config: Config,
    model: ModelConfig,
    store: Cache,
    say: Progress,
    loaded: Loaded,
    conversions: dict[tuple[Any, ...], Converted],
) -> Entry:
    key = fingerprint(config, model)
    entry = store.get(key)
    if entry is not None:
        loaded.reused.append(model.name)
        if key in store.fetched:
            loaded.fetched.append(model.name)
            say(f"fetched {model.name} from the shared cache")
        return entry
    say(
        f"converting {model.name} ({model.input.kind} → {model.format}, "
        f"quantize {_quantize_label(model)})"
    )
    from bundler.models.convert import convert  # imports nothing heavy; TensorFlow loads lazily
    from bundler.models.weights import param_count

    # Models of one source, format and inputs share a conversion; quantizing and sharding
    # come after it.
    same = (model.source, model.format, model.samples, model.samples_limit, model.input_shape)
    converted = conversions.get(same)
    try:
        if converted is None:
            converted = convert(model, verify=True)
            conversions[same] = converted
        quantize, chosen = model.quantize, None
        if quantize.is_auto:
            chosen = _choose(model, converted, say)
            quantize = Quantize("auto", _dtype_map(chosen.dtypes))
        cap, quality = config.shard_cap(model), config.project.brotli_quality
        files, packed = pack.build_files(converted, quantize, cap, quality)
        _check_bytes(model, sum(len(data) for _, data in packed.shards))
    except ModelError as err:
        raise err.of(model.name) from err.__cause__
    meta = {
        "params": param_count(converted.groups),
        "source_bytes": cache.source_bytes(model),
        "errors": {},
        "made_up_inputs": converted.inputs.made_up,
        "source_dtypes": _stored_dtypes(model),
    }
    if chosen is not None:
        table: dict[str, list[str]] = {}
        for name, dtype in sorted(chosen.dtypes.items()):
            table.setdefault(dtype, []).append(name)
        meta["auto"] = {
            "constraints": model.constraints.to_json(),
            "table": table,
            "weight_bytes": chosen.weight_bytes,
            "judged_in_tensorflow": chosen.metrics.to_json(),
            "candidates": chosen.runs,
        }
    reference = list(converted.reference) if converted.reference is not None else []
    entry = store.put(key, files, meta, list(converted.inputs.arrays), reference)
    loaded.converted.append(model.name)
    return entry


def _choose(model: ModelConfig, converted: Converted, say: Progress) -> auto.Choice:
    """quantize = "auto": judge candidates in TensorFlow on the samples (models/auto.py)."""
    from bundler.models.convert import quiet_tensorflow
    from bundler.models.evaluate import Evaluator

    every = {w.name: w.array for group in converted.groups for w in group}
    inputs = converted.inputs
    with quiet_tensorflow():
        evaluator = Evaluator(
            model.format, converted.model_json, every, inputs.arrays, inputs.chunk
        )
        # A tfjs source has no TensorFlow reference: the model itself, unquantized, is one.
        reference = converted.reference or tuple(evaluator.run(every))

    def run(weights: Mapping[str, Any]) -> list[Any]:
        with quiet_tensorflow():  # not around the search: its progress lines must show
            return evaluator.run(weights)

    choice = auto.choose(converted.groups, reference, run, model.constraints, say)
    if not choice.met:
        m = choice.metrics
        top1 = "-" if m.top1_agreement is None else f"{m.top1_agreement:.2%}"
        given = ", ".join(f"{k} = {v}" for k, v in model.constraints.to_json().items())
        raise ModelError(
            f'quantize "auto": no choice of dtypes meets {given} on the samples; the best '
            f"reached gives top-1 agreement {top1}, max error {m.max_abs_error:.3g} and "
            f"{choice.weight_bytes:,} weight bytes. Loosen a constraint, or give samples that "
            "represent the model's real inputs"
        )
    counts = Counter(choice.dtypes.values())
    mix = ", ".join(f"{counts[d]} {d}" for d in ("uint8", "uint16", "float16", "none") if counts[d])
    say(f"quantize auto for {model.name}: {mix} ({choice.runs} candidates judged)")
    return choice


def _dtype_map(dtypes: Mapping[str, str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A per-weight choice as a quantize table: each weight's name as a pattern of its own."""
    table: dict[str, list[str]] = {}
    for name, dtype in sorted(dtypes.items()):
        if dtype != "none":
            table.setdefault(dtype, []).append(glob.escape(name))
    return tuple((dtype, tuple(names)) for dtype, names in table.items())


def _check_bytes(model: ModelConfig, weight_bytes: int) -> None:
    limit = model.constraints.max_bytes
    if limit is not None and weight_bytes > limit:
        raise ModelError(
            f"its weights take {weight_bytes:,} bytes at quantize {_quantize_label(model)}, "
            f"over max_bytes = {limit:,}; quantize more (uint8), or raise max_bytes"
        )


def verify_all(
    config: Config, loaded: Loaded, runtimes: Sequence[Runtime], say: Progress
) -> list[str]:
    """Verify each model in each runtime it ships with; record errors in its cache entry.

    Returns the warnings for the report. Raises VerifyError when a model fails to load or run.
    """
    warnings = []
    checked = [m for m in config.models if m.verify and config.project.verify]
    for model in config.models:
        if model not in checked:
            warnings.append(
                f'model "{model.name}": not verified (verify = false): nothing checked that '
                "the tfjs runtime loads it and predicts what the source model predicts"
            )
    entries = loaded.entries
    jobs: list[tuple[Runtime, list[ModelConfig]]] = []
    for rt in runtimes:
        todo = [m for m in checked if rt.id not in entries[m.name].meta["errors"]]
        if todo:
            jobs.append((rt, todo))
    # A tfjs source has no TensorFlow reference: its model.json runs once, in the stock
    # runtime of the first version the build verifies in, while the runtimes run the
    # bundle's files (the comparison waits for both).
    lacking = {m.name for _, todo in jobs for m in todo}
    sources = [
        m for m in checked if m.name in lacking and entries[m.name].meta["verify_outputs"] == 0
    ]
    # One check per model (its verification data read once), for every runtime.
    checks = {m.name: _check(m, entries[m.name]) for m in checked if m.name in lacking}
    tasks: list[Callable[[], Any]] = []
    labels = []
    if sources:
        version = runtimes[0].version
        tasks.append(
            functools.partial(source_outputs, [checks[m.name] for m in sources], version, say)
        )
        names = ", ".join(m.name for m in sources)
        labels.append(f"running the source of {names} in tfjs {version} (the reference)")
    for rt, todo in jobs:
        tasks.append(functools.partial(run, [checks[m.name] for m in todo], rt, say))
        labels.append(f"verifying {', '.join(m.name for m in todo)} in {rt.label}")
    outcomes = _in_parallel(tasks, labels, say)
    if sources:
        references = outcomes.pop(0)
        for m in sources:
            reference = references[m.name]
            entries[m.name] = entries[m.name].with_reference(reference, f"tfjs {version}")
            checks[m.name] = dataclasses.replace(checks[m.name], reference=reference)
    for (rt, todo), results in zip(jobs, outcomes, strict=True):
        errors = judge([checks[m.name] for m in todo], rt, results)
        for m in todo:
            entries[m.name] = entries[m.name].with_errors({rt.id: errors[m.name].to_json()})
    # The results travel with the entry to other machines.
    for name in dict.fromkeys(m.name for _, todo in jobs for m in todo):
        loaded.store.share(entries[name])
    missed = []
    for m in checked:
        for rt in runtimes:
            measured = Metrics.from_json(entries[m.name].meta["errors"][rt.id])
            error = measured.max_abs_error
            if m.quantize.is_none and error > FLOAT_TOLERANCE:
                warnings.append(
                    f'model "{m.name}": unquantized, yet {rt.label} differs from the source '
                    f"by up to {error:.3g}; check the model's ops"
                )
            if not auto.meets(measured, m.constraints):
                missed.append(_missed(m, rt, measured))
    if missed:
        noun = "model misses" if len(missed) == 1 else "models miss"
        raise VerifyError(f"{len(missed)} {noun} its constraints:", problems=tuple(missed))
    return list(dict.fromkeys(warnings))


def _check(model: ModelConfig, entry: Entry) -> Check:
    inputs, reference = entry.verify_data()
    specs = input_specs(entry.doc)
    free = all(shape[:1] in ([None], [-1]) for _, shape, _ in specs)
    # A reference from stock tfjs (kept, or to be run beside this check: a tfjs source has no
    # other) ran the rows as one batch: the bundle's runtime then runs a layers model in
    # batches of one row only, and the two batch paths are still compared.
    stock = "reference_from" in entry.meta or entry.meta["verify_outputs"] == 0
    one_row = free and model.format == "layers" and stock
    return Check(
        name=model.name,
        model_json=entry.folder / MODEL_JSON,
        format=model.format,
        inputs=tuple(inputs),
        reference=tuple(reference) if reference else None,
        source_json=model.input.path if not reference else None,
        other_batch=free and bool(inputs) and not one_row,
        one_row_batches=one_row,
        made_up=entry.meta["made_up_inputs"],
        chunk_rows=samples.chunk_rows(specs),
    )


def _in_parallel(
    tasks: Sequence[Callable[[], Any]], labels: Sequence[str], say: Progress
) -> list[Any]:
    """Run each task in a thread of its own (each waits on its Node processes, which share
    the cores); the first failure in task order is raised once all have ended."""
    for label in labels:
        say(label)
    if len(tasks) < 2:
        return [task() for task in tasks]
    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        futures = [pool.submit(task) for task in tasks]
        wait(futures)
    return [future.result() for future in futures]


def _missed(model: ModelConfig, rt: Runtime, measured: Metrics) -> str:
    c = model.constraints
    top1 = measured.top1_agreement
    found = []
    if c.min_top1 is not None:
        found.append(
            f"top-1 agreement {'-' if top1 is None else f'{top1:.2%}'} (min_top1 {c.min_top1:g})"
        )
    if c.max_error is not None:
        found.append(f"max error {measured.max_abs_error:.3g} (max_error {c.max_error:g})")
    chosen = ' chosen by "auto" in TensorFlow' if model.quantize.is_auto else ""
    return (
        f'model "{model.name}": in {rt.label}, its weights{chosen} give {" and ".join(found)}; '
        "loosen the constraint, or quantize less"
    )


def docs(config: Config, loaded: Loaded) -> list[tuple[str, dict[str, Any]]]:
    """Each model's format and model.json, parsed: what its tfjs runtime is derived from."""
    return [(m.format, loaded.entries[m.name].doc) for m in config.models]


def artifacts(
    config: Config, loaded: Loaded, runtimes: Sequence[Runtime] = ()
) -> tuple[ModelArtifacts, ...]:
    """The manifest's models as targets see them, in manifest order, with what `runtimes`
    measured (the worst per tfjs version)."""
    return tuple(_artifacts(m, loaded.entries[m.name], runtimes) for m in config.models)


def _metrics(entry: Entry, runtimes: Sequence[Runtime]) -> dict[str, Metrics]:
    found: dict[str, Metrics] = {}
    for rt in runtimes:
        data = entry.meta["errors"].get(rt.id)
        if data is not None:
            measured = Metrics.from_json(data)
            known = found.get(rt.version)
            found[rt.version] = measured if known is None else known.worst(measured)
    return found


def _artifacts(model: ModelConfig, entry: Entry, runtimes: Sequence[Runtime]) -> ModelArtifacts:
    model_json = entry.read(MODEL_JSON)
    doc = entry.doc
    inputs, reference = entry.verify_data()
    specs_in, specs_out = tensor_specs(doc, tuple(reference))
    return ModelArtifacts(
        model=model,
        hash=entry.content_hash,
        model_json=model_json,
        model_json_br=entry.read(MODEL_JSON + BROTLI_SUFFIX),
        doc=doc,
        shards=tuple(
            Shard(name, entry.read(name), entry.read(name + BROTLI_SUFFIX))
            for name in shard_names(doc)
        ),
        inputs=specs_in,
        outputs=specs_out,
        verify_inputs=tuple(inputs),
        reference=tuple(reference),
        params=entry.meta["params"],
        source_bytes=entry.meta["source_bytes"],
        metrics=_metrics(entry, runtimes),
        made_up_inputs=entry.meta["made_up_inputs"],
        auto=entry.meta.get("auto"),
    )


def _quantize_label(model: ModelConfig) -> str:
    label = model.quantize.label
    return label if isinstance(label, str) else json.dumps(label)
