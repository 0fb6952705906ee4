"""`make bench`, the WeChat part: a warm load from the bundler's file cache against the
tfjsPlugin's `localStorageIO` route, in the strict wx simulator (tests/wx/simulator.cjs).

What runs (see bench/README.md, "The WeChat cache benchmark"):

- A tf_keras MLP 784-1024-256-10 (1,068,810 float32 parameters, 4,275,240 bytes of weights,
  random non-zero weights and biases, linear outputs), made once into
  bench/work/wechat_cache/model/ (reused while MODEL_VERSION is unchanged) with Keras's
  prediction on a fixed input.
- `bundler build` of it with `targets = ["wechat"]`, `delivery = "remote"`,
  `remote_base_url = "https://models.example.com/m/"`, `cache = "file"`, format graph (the
  bundler's own cache makes later runs a cache hit). Not timed.
- bench/wechat_cache.cjs, in one Node process on one simulated phone: a first app launch loads
  the model with the generated `loadModel`, from the simulator's local HTTP server into the
  file cache, and saves it with a port of the plugin's `localStorageIO` (bench/
  wechat_local_storage_io.js: base64 weights in 800 KB storage keys). Then, after one
  untimed warm-up round, `--repeat` rounds (default 5) of new app launches, the order
  alternating: `loadModel` warm from the file cache (zero requests), `tf.loadGraphModel(
  localStorageIO(key))`, the same with getStorageSync reads, and tfjs building the model from
  artifacts already in memory. Every load predicts the fixed input: it must equal the cold
  load's prediction exactly and Keras's within ATOL, or the bench fails.

Printed: the median times, the ratio file cache / localStorageIO, the storage each route uses.
Results go to the `wechat_cache` key of bench/work/results.json (other keys are kept), the Node
process's stderr to bench/work/logs/wechat_cache.log. Exit status 1 when anything fails.

Usage: .venv/bin/python bench/wechat_cache.py [--repeat N]   (bench/run.py runs it last)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from run import (
    BENCH,
    BUNDLER,
    checked,
    measure,
    median,
    merge_results,
    say,
    source_digest,
    versions,
)

from bundler import limits
from bundler.runtimes import ensure_packages, ensure_tfjs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow loads here when the model is made
os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")

MODEL_VERSION = 1  # bump when the model changes: it is made again
MODEL = "mlp4m"
UNITS = (784, 1024, 256, 10)
SEED = 4242
BATCH = 4
ATOL = 1e-4  # against Keras (outputs are logits of magnitude ~1-5); routes must agree exactly
TFJS_VERSION = limits.DEFAULT_WECHAT_TFJS_VERSION
BASE64_JS = "1.3.1"  # tfjs-wechat plugin 0.2.0's package.json
REMOTE_BASE = "https://models.example.com/m/"
STORAGE_KEY = MODEL  # localStorageIO(key)
RUNNER = BENCH / "wechat_cache.cjs"
NODE_TIMEOUT_S = 600
ROUTES = ("file", "storage", "storage-sync", "memory")
MB = 1e6
MIB = 1024 * 1024


# --- the model and the build -----------------------------------------------------------------


def make_model(folder: Path) -> dict[str, Any]:
    """The MLP as .h5, the input and Keras's output; reused while MODEL_VERSION holds."""
    stamp_path = folder / "model.json"
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
        if stamp.get("version") == MODEL_VERSION and all(
            (folder / stamp[k]).is_file() for k in ("h5", "x", "y")
        ):
            say(f"reusing the model in {folder}")
            return dict(stamp)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    say(f"making the model in {folder} (not timed) ...")
    import warnings

    import tf_keras

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tf_keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    inp = tf_keras.Input((UNITS[0],), name="features")
    x = inp
    for i, width in enumerate(UNITS[1:-1]):
        x = tf_keras.layers.Dense(width, activation="relu", name=f"hidden{i}")(x)
    out = tf_keras.layers.Dense(UNITS[-1], name="logits")(x)
    model = tf_keras.Model(inp, out, name=MODEL)
    weights = []
    for w in model.get_weights():
        scale = 1.5 / np.sqrt(w.shape[0]) if w.ndim == 2 else 0.3  # no bias is zero
        weights.append(rng.normal(0.0, scale, w.shape).astype(np.float32))
    model.set_weights(weights)
    x_in = rng.random((BATCH, UNITS[0]), dtype=np.float32)
    y = np.asarray(model(x_in, training=False), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "HDF5 ... is considered legacy"
        model.save(folder / f"{MODEL}.h5", include_optimizer=False)
    (folder / "x.bin").write_bytes(np.ascontiguousarray(x_in, dtype="<f4").tobytes())
    (folder / "y.bin").write_bytes(np.ascontiguousarray(y, dtype="<f4").tobytes())
    stamp = {
        "version": MODEL_VERSION,
        "units": list(UNITS),
        "params": int(model.count_params()),
        "h5": f"{MODEL}.h5",
        "x": "x.bin",
        "x_shape": list(x_in.shape),
        "y": "y.bin",
        "y_shape": list(y.shape),
    }
    stamp_path.write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    tf_keras.backend.clear_session()
    return stamp


def write_manifest(root: Path, h5: Path) -> Path:
    path = root / "bundle.toml"
    path.write_text(
        "\n".join(
            [
                "# Written by bench/wechat_cache.py; see its docstring.",
                "[project]",
                'name = "bench-wechat-cache"',
                'out = "dist"',
                'cache_dir = ".bundler-cache"',
                'targets = ["wechat"]',
                "",
                "[wechat]",
                f"remote_base_url = {json.dumps(REMOTE_BASE)}",
                'cache = "file"',
                f"tfjs_version = {json.dumps(TFJS_VERSION)}",
                "",
                "[[models]]",
                f"name = {json.dumps(MODEL)}",
                f"source = {json.dumps(os.path.relpath(h5, root))}",
                'format = "graph"',
                'quantize = "none"',
                'delivery = "remote"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    return path


def models_js_entry(wechat: Path, name: str) -> dict[str, Any]:
    js = (wechat / "bundler" / "models.js").read_text(encoding="utf-8")
    start = js.index("module.exports = ") + len("module.exports = ")
    entries: dict[str, Any] = json.loads(js[start : js.rindex(";")])
    return dict(entries[name])


# --- running and reading ---------------------------------------------------------------------


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    timed = [r for r in result["rounds"] if not r["warmup"]]
    ms = {route: median([r[route]["ms"] for r in timed]) for route in ROUTES}
    return {
        "file_cache_ms": ms["file"],
        "local_storage_io_ms": ms["storage"],
        "ratio_file_cache_to_local_storage_io": ms["file"] / ms["storage"],
        "local_storage_io_sync_reads_ms": ms["storage-sync"],
        "ratio_file_cache_to_sync_reads": ms["file"] / ms["storage-sync"],
        "tfjs_from_memory_ms": ms["memory"],
        "file_cache_reading_ms": ms["file"] - ms["memory"],
        "local_storage_io_reading_ms": ms["storage"] - ms["memory"],
        "file_cache_bytes": result["storage"]["file_cache"]["bytes"],
        "local_storage_io_bytes": result["storage"]["local_storage"]["bytes"],
        "glue_sha256_ms": result["components"]["glue_sha256_ms"],
        "base64_decode_ms": result["components"]["base64_decode_ms"],
    }


def _calls(wx: dict[str, int]) -> str:
    shown = [f"{n} {k}" for k, n in wx.items() if n]
    return ", ".join(shown) or "no wx call"


def print_table(res: dict[str, Any]) -> None:
    med = res["median"]
    raw = res["node"]
    timed = [r for r in raw["rounds"] if not r["warmup"]]
    first = timed[0]
    n = len(timed)
    print(
        f"\nWeChat: {res['weight_bytes'] / MIB:.2f} MiB model ({MODEL}, "
        f"{res['params']:,} float32 params, graph, {res['shards']} shards) loaded warm in the "
        f"wx simulator, median of {n} app launch{'es' if n > 1 else ''} each, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(f"{'':52} {'ms':>8} {'x LS-IO':>8}  wx calls, requests")
    print("-" * 100)
    rows = [
        ("bundler loadModel, warm from the file cache", "file"),
        ("tfjsPlugin localStorageIO (wx.getStorage)", "storage"),
        ("  the same with wx.getStorageSync (not the plugin)", "storage-sync"),
        ("  tfjs alone: artifacts already in memory", "memory"),
    ]
    base = med["local_storage_io_ms"]
    for label, route in rows:
        ms = median([r[route]["ms"] for r in timed])
        print(
            f"{label:52} {ms:8.1f} {ms / base:7.3f}x  "
            f"{_calls(first[route]['wx'])}, {first[route]['requests']} requests"
        )
    print(
        f"\nratio file cache / localStorageIO: {med['ratio_file_cache_to_local_storage_io']:.3f}"
        f"  ({med['file_cache_ms']:.1f} ms / {med['local_storage_io_ms']:.1f} ms; against "
        f"getStorageSync reads {med['ratio_file_cache_to_sync_reads']:.3f})"
    )
    parts = raw["components"]
    print(
        f"\nreading (the route − tfjs alone): file cache {med['file_cache_reading_ms']:.1f} ms, "
        f"localStorageIO {med['local_storage_io_reading_ms']:.1f} ms, of which, measured alone:"
    )
    print(
        f"  the glue's JS SHA-256 of the {parts['glue_sha256_files']} cached files "
        f"({parts['glue_sha256_bytes'] / MB:.2f} MB; warm loads use getFileInfo's native digest "
        "instead where the base library has it): "
        f"{parts['glue_sha256_ms']:.1f} ms"
    )
    print(
        f"  base64-js toByteArray of the stored weights ({parts['base64_chars'] / MB:.2f} MB "
        f"of base64): {parts['base64_decode_ms']:.1f} ms"
    )
    print(
        f"  each asynchronous wx call waits ≥ {raw['timer_tick_ms']:.2f} ms for the simulator's "
        f"setTimeout: localStorageIO awaits {first['storage']['wx']['getStorage']} in a row, "
        "the glue's readFile calls overlap"
    )
    fc = raw["storage"]["file_cache"]
    ls = raw["storage"]["local_storage"]
    largest = max(k["bytes"] for k in ls["keys"])
    print("\nstorage on the phone:")
    print(
        f"  file cache     {fc['bytes']:>10,} bytes in {len(fc['files'])} files under "
        f"USER_DATA_PATH ({fc['bytes'] / fc['limit_bytes']:.1%} of the "
        f"{fc['limit_bytes'] // MIB} MB quota)"
    )
    print(
        f"  localStorageIO {ls['bytes']:>10,} bytes in {len(ls['keys'])} wx storage keys "
        f"({ls['bytes'] / ls['limit_bytes']:.1%} of the {ls['limit_bytes'] // MIB} MB limit; "
        f"largest key {largest:,} of {ls['key_limit_bytes']:,}); "
        f"{ls['bytes'] / fc['bytes']:.2f}x the file cache"
    )
    cold = raw["cold"]
    print(
        f"\nsetup, untimed: cold load from the local server {cold['ms']:.0f} ms "
        f"({cold['requests']} requests, {cold['bytes_downloaded']:,} bytes); "
        f"localStorageIO save {raw['save']['ms']:.0f} ms ({raw['save']['set_storage_calls']} "
        f"setStorageSync); every load predicted the cold load's output exactly, "
        f"{res['keras_max_abs_err']:.1e} from Keras (tolerance {ATOL:g})"
    )
    if res["bundler_source"]["changed_during_run"]:
        print("\nWARNING: the bundler's source changed during this run; run it again")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument(
        "--work", type=Path, default=BENCH / "work", help="work folder (default bench/work)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    work: Path = args.work.resolve()
    root = work / "wechat_cache"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.time()
    digest_before = source_digest()

    stamp = make_model(root / "model")
    man = write_manifest(root, root / "model" / stamp["h5"])
    say("wechat cache bench: bundler build (untimed; a cache hit after the first run)")
    m = measure([BUNDLER, "build", "--json", man])
    (logs / "wechat_cache-build.log").write_text(m.stderr, encoding="utf-8")
    checked(m, "bundler build of the WeChat bench model")
    build = json.loads(m.stdout)["build"]
    say(
        f"  bundler build {m.wall_s:.1f} s (converted {len(build['converted'])}, "
        f"reused {len(build['reused'])})"
    )
    out = root / "dist"
    entry = models_js_entry(out / "wechat", MODEL)
    if entry["delivery"] != "remote":
        sys.exit(f"wechat cache bench: {MODEL} was planned as {entry['delivery']}, not remote")

    tfjs_dir = ensure_tfjs(TFJS_VERSION, log=say)
    base64_dir = ensure_packages(
        f"base64-js-{BASE64_JS}",
        {"base64-js": BASE64_JS},
        purpose=f"base64-js {BASE64_JS} (what tfjsPlugin's localStorageIO decodes with)",
        log=say,
    )
    run_dir = root / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # the simulated phone starts empty
    run_dir.mkdir(parents=True)
    job = {
        "project": str(out / "wechat"),
        "remote_dir": str(out / "remote"),
        "base_url": REMOTE_BASE,
        "tfjs_dir": str(tfjs_dir),
        "base64_dir": str(base64_dir),
        "user_dir": str(run_dir / "usr"),
        "model": MODEL,
        "storage_key": STORAGE_KEY,
        "input": {"file": str(root / "model" / stamp["x"]), "shape": stamp["x_shape"]},
        "expected": {"file": str(root / "model" / stamp["y"]), "shape": stamp["y_shape"]},
        "atol": ATOL,
        "repeat": args.repeat,
        "result": str(run_dir / "result.json"),
    }
    job_path = run_dir / "job.json"
    job_path.write_text(json.dumps(job, indent=1), encoding="utf-8")
    say(f"wechat cache bench: {args.repeat} rounds + 1 warm-up in the wx simulator ...")
    load_before = os.getloadavg()
    with (logs / "wechat_cache.log").open("w", encoding="utf-8") as log:
        proc = subprocess.run(
            ["node", "--expose-gc", str(RUNNER), str(job_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=NODE_TIMEOUT_S,
            check=False,
        )
    try:
        record = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {"result": None, "error": None}
    if proc.returncode != 0 or record.get("error") or not record.get("result"):
        tail = "\n".join((logs / "wechat_cache.log").read_text().strip().splitlines()[-25:])
        sys.stderr.write(
            f"\nwechat cache bench FAILED (exit status {proc.returncode}): "
            f"{record.get('error') or 'no result'}\n{tail}\n"
        )
        return 1
    raw: dict[str, Any] = record["result"]
    errs = [r[k]["keras_max_abs_err"] for r in raw["rounds"] for k in ROUTES]
    if not all(r[k]["same_as_file_cache"] for r in raw["rounds"] for k in ROUTES) or not (
        max(errs) <= ATOL
    ):
        sys.stderr.write("\nwechat cache bench FAILED: a route predicted something else\n")
        return 1
    digest_after = source_digest()
    results: dict[str, Any] = {
        "repeat": args.repeat,
        "model": {"name": MODEL, "units": list(UNITS), "format": "graph"},
        "params": stamp["params"],
        "weight_bytes": entry["weightBytes"],
        "shards": len(entry["shards"]),
        "hash": entry["hash"],
        "keras_max_abs_err": max(errs),
        "atol": ATOL,
        "median": summarize(raw),
        "node": raw,
        "tfjs_version": TFJS_VERSION,
        "base64_js": BASE64_JS,
        "plugin_source": "tensorflow/tfjs-wechat src/plugin/utils/local_storage.ts (0.2.0)",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "bench_seconds": round(time.time() - started, 1),
            "build_s": round(m.wall_s, 2),
        },
        "versions": versions(),
        "bundler_source": {
            "before": digest_before,
            "after": digest_after,
            "changed_during_run": digest_before != digest_after,
        },
    }
    path = merge_results(work, "wechat_cache", results)
    print_table(results)
    print(f"\nwrote the `wechat_cache` key of {path}; log in {logs / 'wechat_cache.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
