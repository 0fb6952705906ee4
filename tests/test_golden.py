"""Golden build of example_site/: the output tree, exact except where CPUs may differ.

TensorFlow folds digits_cnn's BatchNorm into its convolution with rounding that depends on
the CPU, so a build elsewhere may differ from this one in the last bits of some float
weights, hence in those shards' brotli sizes, their sha256s and the model's folder hash
(`models/<name>/<hash>/`, made from the bytes written). So the test compares the build with
tests/golden/example_site/ after normalizing those, and compares numbers with a tolerance:

    files.txt        every output path, sorted
    report.json      bundle-report.json
    tree/<path>      every generated text file (a model's folder hash is `{hash}` in the path)
    sha256.txt       digests of the tfjs runtime files the build makes (web's tf.min.js,
                     WeChat's tfjs/index.js): minified, built from pinned npm packages
    weights/<m>.npz  each model's decoded weights (float32 after dequantization), and under
                     `__specs__` their names, shapes, dtypes and quantization dtypes

Normalized: each model's folder hash becomes `{hash:<model>}`; each sha256 becomes
`{sha256:<the output file it is the digest of>}`, or `{sha256}` when no output file has it;
JSON is pretty-printed with sorted keys. Then non-number text must match exactly, numbers
within the tolerances below, and weights within one quantization step (see WEIGHT_*).
What needs no golden data is checked exactly: every .br and .gz decompresses to the file
beside it (or, for a WeChat subpackage's shard, which has none, to the models/ copy's), and
every other copy of a model's files (web/models/, WeChat subpackages, remote/) is
byte-identical to its models/ copy.

After a change meant to change the output, rewrite the golden tree and review its git diff:

    BUNDLER_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

Reading a failure: every difference is listed, then the test fails once.
- Text: a unified diff per file, `---` the golden copy and `+++` the build. Lines whose
  numbers differ only within tolerance are not shown as changed. Lines over 120 characters
  are split after each ", " (both sides alike), so one changed value in the demo page's
  long sample line shows alone. Below each diff, `line N: a -> b` for each number out of
  tolerance, with the difference and the tolerance (N counts the split lines, as the diff's
  @@ headers do).
- Weights: the model, the weight, the worst difference, where, and the tolerance there.
- Exact checks: the file and what it should have equalled.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotli
import numpy as np
import pytest
from conftest import needs_node

from bundler.models import weights

# --- tolerances ---------------------------------------------------------------------------------

# Floats in text. TensorFlow's outputs that a build writes (the demo pages' expected outputs,
# the report's max_abs_error) are softmax probabilities in [0, 1] and differences of them, in
# float32: another CPU's summation order moves them by about 1e-7, at worst 1e-6. ABS_TOL
# leaves ten times that, and still sees the uint8 model's 1.9e-4 error grow by 10 %.
ABS_TOL = 1e-5
# float32 holds about 7 significant digits and CPUs differ in the last one or two, so 1e-4 is
# a hundred times the noise, for floats too large for ABS_TOL to cover (quantization ranges).
FLOAT_REL_TOL = 1e-4
# Integers in text that vary are byte counts: a shard's brotli size moves when its weight bits
# do, and so do the sums of sizes in the report, models.js and app.json. Flipping the lowest
# mantissa bit of every float in digits_cnn's shard moved its 36,902 brotli bytes by at most
# 7 (2e-4). 1e-2 leaves room for smaller shards (a 1 KB shard may move 10 bytes); it also
# lets any integer from 100 up move by 1 %, but shapes and parameter counts are checked
# exactly through the weights, and integers below 100 stay exact.
INT_REL_TOL = 1e-2

# Weights. float32 weights that TensorFlow computed (BatchNorm folded into a kernel) differ by
# an ulp or so across CPUs, 6e-8 relative: these are np.allclose's tolerances, far above that.
WEIGHT_ATOL = 1e-6
WEIGHT_RTOL = 1e-5
# A quantized weight may land on the neighbouring level when its float value moved across a
# rounding boundary: it may differ by one step more, the entry's `scale` for uint8/uint16 and
# one float16 ulp for float16.

# Lines longer than this are split after each ", " before diffing.
WRAP = 120

# --- where things are -------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SITE = ROOT / "example_site"
GOLDEN = Path(__file__).resolve().parent / "golden" / "example_site"
UPDATE = os.environ.get("BUNDLER_UPDATE_GOLDEN") == "1"
REPORT = "bundle-report.json"
BUILD_TIMEOUT_S = 600

HASH = r"[0-9a-f]{8}"
# Copies of a model's files outside models/<name>/<hash>/: each must equal its models/ copy.
COPIES = [
    re.compile(rf"web/models/(?P<name>[^/]+)/(?P<hash>{HASH})/(?P<file>.+)"),
    re.compile(rf"wechat/models-(?P<name>[^/]+)-\d+/(?P=name)/(?P<hash>{HASH})/(?P<file>.+)"),
    re.compile(rf"(?:wechat/)?remote/(?P<name>[^/]+)/(?P<hash>{HASH})/(?P<file>.+)"),
]
MODEL_FILE = re.compile(rf"models/(?P<name>[^/]+)/(?P<hash>{HASH})/(?P<file>.+)")
# Folders named by a content hash: a URL that names a hash must hold the same bytes forever.
HASHED_FOLDER = re.compile(
    rf"(?:models/[^/]+|web/models/[^/]+|web/vendor/.+|wechat/models-[^/]+/[^/]+|remote/[^/]+)"
    rf"/{HASH}/"
)
# The tfjs runtime files (minified, from pinned npm packages): a digest, not a copy in tree/.
VERBATIM = re.compile(r"web/vendor/|wechat/tfjs/index\.js$")
COMPRESSED = (".br", ".gz")

SHA256 = re.compile(r"(?<![0-9a-fA-F])[0-9a-f]{64}(?![0-9a-fA-F])")
# A number standing alone: not part of a word (`group1`), a version (`4.22.0`), a name with
# a dash (`models-digits-1`) or a colour (`#333`).
NUMBER = re.compile(r"(?<![\w.#-])-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")
INTEGER = re.compile(r"-?\d+")


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.slow
@needs_node
def test_example_site_builds_as_golden(tmp_path: Path) -> None:
    site = _copy_site(tmp_path / "example_site")
    _finish(_start_build(site, tmp_path / "build", os.environ))
    got, problems = snapshot(site / "dist")

    if UPDATE:
        _write_golden(got)
    else:
        assert GOLDEN.is_dir(), f"no {GOLDEN}; create it with BUNDLER_UPDATE_GOLDEN=1"
        problems += compare(_read_golden(), got)
    if problems:
        pytest.fail(f"{len(problems)} differences:\n\n" + "\n\n".join(problems), pytrace=False)


@pytest.mark.slow
@needs_node
def test_hashed_folders_hold_the_same_bytes_with_onednn_on_and_off(tmp_path: Path) -> None:
    # oneDNN changes how TensorFlow computes (BatchNorm folding included); on some CPUs the two
    # settings give different weight bits, and then the folder hash must differ too.
    outs, builds = {}, []
    for flag in ("0", "1"):
        site = _copy_site(tmp_path / f"onednn-{flag}" / "example_site")
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": flag}
        builds.append(_start_build(site, tmp_path / f"onednn-{flag}", env))
        outs[flag] = site / "dist"
    try:
        for running in builds:
            _finish(running)
    finally:
        for running in builds:  # the other build, when one failed
            if running.proc.poll() is None:
                running.proc.kill()
                running.proc.wait()

    hashed = {
        flag: {rel for rel in _files(out) if HASHED_FOLDER.match(rel)} for flag, out in outs.items()
    }
    common = sorted(hashed["0"] & hashed["1"])
    assert any(rel.startswith("web/vendor/") for rel in common), "no hashed folder in both"
    differ = [
        rel for rel in common if (outs["0"] / rel).read_bytes() != (outs["1"] / rel).read_bytes()
    ]
    assert differ == [], "same content-hashed path, different bytes with oneDNN on and off"


# --- building -----------------------------------------------------------------------------------


@dataclass
class _Build:
    proc: subprocess.Popen[bytes]
    logs: Path


def _copy_site(dest: Path) -> Path:
    shutil.copytree(EXAMPLE_SITE, dest, ignore=shutil.ignore_patterns("dist", ".bundler-cache"))
    return dest


def _start_build(site: Path, logs: Path, env: Mapping[str, str]) -> _Build:
    """`bundler build --json` in a fresh Python, with its own cache (beside the manifest)."""
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "stdout").open("wb") as out, (logs / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bundler", "build", str(site / "bundle.toml"), "--json"],
            stdout=out,
            stderr=err,
            env=dict(env),
            cwd=ROOT,
        )
    return _Build(proc, logs)


def _finish(build: _Build) -> None:
    try:
        code = build.proc.wait(timeout=BUILD_TIMEOUT_S)
    finally:
        if build.proc.poll() is None:  # timed out, or the test was interrupted
            build.proc.kill()
            build.proc.wait()
    stderr = (build.logs / "stderr").read_text(errors="replace")
    assert code == 0, f"bundler build exited with {code}:\n{stderr}"


def _files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


# --- what a build is compared by ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelWeights:
    """A model's decoded weights; `steps` (quantization scales) come from the build only."""

    specs: list[dict[str, Any]]  # name, shape, dtype, quantization dtype: compared exactly
    arrays: dict[str, np.ndarray[Any, Any]]
    steps: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """A build as the golden tree holds it: texts by their path in the tree, and weights."""

    texts: dict[str, str]
    weights: dict[str, ModelWeights]


def snapshot(out: Path) -> tuple[Snapshot, list[str]]:
    """Normalize a build's output; also return what failed the exact checks."""
    problems: list[str] = []
    report = json.loads((out / REPORT).read_text())
    rels = _files(out)
    hashes = _model_hashes(out, report, problems)
    paths = {rel: _hash_placeholders(rel, hashes) for rel in rels}
    digests: dict[str, str] = {}
    for rel in sorted(rels, key=paths.__getitem__):  # the first path names a shared digest
        digests.setdefault(_sha256((out / rel).read_bytes()), paths[rel])

    texts = {
        "files.txt": "".join(f"{path}\n" for path in sorted(paths.values())),
        "report.json": normalize(REPORT, (out / REPORT).read_text(), hashes, digests),
    }
    verbatim = []
    for rel in rels:
        if rel.endswith(COMPRESSED):
            problems += _check_compressed(out, rel)
        copy_of = _copy_of(rel)
        if copy_of is not None:
            problems += _check_copy(out, rel, copy_of)
        if rel.endswith(COMPRESSED) or copy_of is not None or rel == REPORT:
            continue
        if MODEL_FILE.fullmatch(rel) and rel.endswith(".bin"):
            continue  # read through model.json's weightsManifest below
        data = (out / rel).read_bytes()
        text = None if VERBATIM.match(rel) else _utf8(data)
        if text is None:
            verbatim.append(f"{_sha256(data)}  {paths[rel]}\n")
        else:
            tree_path = re.sub(r"\{hash:[^}]*\}", "{hash}", paths[rel])
            texts[f"tree/{tree_path}"] = normalize(rel, text, hashes, digests)
    texts["sha256.txt"] = "".join(sorted(verbatim))

    model_weights = {}
    for model in report["models"]:
        model_json = out / "models" / model["name"] / model["hash"] / "model.json"
        if model_json.is_file():
            model_weights[model["name"]] = read_weights(model_json)
        else:
            problems.append(f"{model_json.relative_to(out)}: the report names it; it is missing")
    return Snapshot(texts, model_weights), problems


def _model_hashes(out: Path, report: Any, problems: list[str]) -> dict[str, set[str]]:
    """Each model's folder hashes: the report's, and the folders' under models/<name>/."""
    hashes: dict[str, set[str]] = {}
    for model in report["models"]:
        name, claimed = model["name"], model["hash"]
        folder = out / "models" / name
        found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        if found != [claimed]:
            problems.append(f"models/{name}/ holds {found}; the report says the hash is {claimed}")
        hashes[name] = {claimed, *(h for h in found if re.fullmatch(HASH, h))}
    owners: dict[str, str] = {}
    for name, values in hashes.items():
        for value in values:
            if owners.setdefault(value, name) != name:
                problems.append(f"models {owners[value]} and {name} share the hash {value}")
    return hashes


def _hash_placeholders(text: str, hashes: Mapping[str, Iterable[str]]) -> str:
    for name, values in hashes.items():
        for value in values:
            text = re.sub(rf"(?<![0-9A-Za-z]){value}(?![0-9A-Za-z])", f"{{hash:{name}}}", text)
    return text


def normalize(
    rel: str, text: str, hashes: Mapping[str, Iterable[str]], digests: Mapping[str, str]
) -> str:
    """Put placeholders for hashes and sha256s; pretty-print JSON with sorted keys."""
    text = SHA256.sub(
        lambda m: f"{{sha256:{digests[m[0]]}}}" if m[0] in digests else "{sha256}", text
    )
    text = _hash_placeholders(text, hashes)
    if rel.endswith(".json"):
        # After the placeholders: a key that holds a hash must not sort by the hash's value.
        try:
            text = json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False)
            text += "\n"
        except json.JSONDecodeError:
            pass  # compared as it is; the diff will show what is wrong with it
    return text


def _copy_of(rel: str) -> str | None:
    """The models/<name>/<hash>/ path that `rel` is a copy of, if it is one."""
    for pattern in COPIES:
        match = pattern.fullmatch(rel)
        if match:
            return f"models/{match['name']}/{match['hash']}/{match['file']}"
    return None


def _check_copy(out: Path, rel: str, original: str) -> list[str]:
    if (out / original).is_file():
        if (out / rel).read_bytes() != (out / original).read_bytes():
            return [f"{rel}: differs from {original}, of which it should be a copy"]
        return []
    if rel.endswith(COMPRESSED):
        return []  # models/ keeps no .gz; _check_compressed compares what it decompresses to
    return [f"{rel}: a copy of {original}, which does not exist"]


def _check_compressed(out: Path, rel: str) -> list[str]:
    plain_rel = rel[: -len(".br")]
    if not (out / plain_rel).is_file():
        plain_rel = _copy_of(plain_rel) or plain_rel  # a subpackage's shard: the models/ copy
    if not (out / plain_rel).is_file():
        return [f"{rel}: no {plain_rel} to compare what it decompresses to with"]
    data = (out / rel).read_bytes()
    try:
        plain = brotli.decompress(data) if rel.endswith(".br") else gzip.decompress(data)
    except (brotli.error, OSError, EOFError, zlib.error) as err:
        return [f"{rel}: does not decompress: {err}"]
    if plain != (out / plain_rel).read_bytes():
        return [f"{rel}: decompresses to {len(plain)} bytes that differ from {plain_rel}"]
    return []


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_weights(model_json: Path) -> ModelWeights:
    """Decode a model's shards through its model.json's weightsManifest."""
    manifest = json.loads(model_json.read_text())["weightsManifest"]
    entries = {entry["name"]: entry for group in manifest for entry in group["weights"]}
    specs: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    steps: dict[str, float] = {}
    for group in weights.read_groups(model_json, manifest):
        for weight in group:
            entry = entries[weight.name]
            quant = entry.get("quantization") or {}
            specs.append(
                {
                    "name": weight.name,
                    "shape": list(entry["shape"]),
                    "dtype": entry["dtype"],
                    "quantization": quant.get("dtype"),
                }
            )
            array = weight.array
            arrays[weight.name] = array.astype(bytes) if array.dtype == object else array
            if "scale" in quant:
                steps[weight.name] = float(quant["scale"])
    return ModelWeights(specs, arrays, steps)


# --- comparing ----------------------------------------------------------------------------------


def compare(want: Snapshot, got: Snapshot) -> list[str]:
    """Every difference between the golden tree and a build, each a readable paragraph."""
    problems = []
    for key in sorted(want.texts.keys() | got.texts.keys()):
        if key not in got.texts:
            problems.append(f"{key}: in the golden tree, not in the build")
        elif key not in want.texts:
            problems.append(f"{key}: in the build, not in the golden tree")
        else:
            diff = compare_text(key, want.texts[key], got.texts[key])
            if diff:
                problems.append(diff)
    for name in sorted(want.weights.keys() | got.weights.keys()):
        if name not in got.weights or name not in want.weights:
            where = "build" if name in got.weights else "golden tree"
            problems.append(f"weights/{name}.npz: only in the {where}")
        else:
            problems += compare_weights(name, want.weights[name], got.weights[name])
    return problems


def compare_text(label: str, want: str, got: str) -> str | None:
    """A unified diff of what differs beyond the number tolerances, or None."""
    want_lines, got_lines = _split(want), _split(got)
    matcher = difflib.SequenceMatcher(
        None,
        [_skeleton(line) for line in want_lines],
        [_skeleton(line) for line in got_lines],
        autojunk=False,
    )
    shown = list(got_lines)  # the build's lines, with those equal within tolerance as golden's
    notes = []
    for tag, i1, i2, j1, _ in matcher.get_opcodes():
        if tag != "equal":
            continue
        for offset in range(i2 - i1):
            i, j = i1 + offset, j1 + offset
            if want_lines[i] == got_lines[j]:
                continue
            pairs = zip(NUMBER.findall(want_lines[i]), NUMBER.findall(got_lines[j]), strict=True)
            outside = [note for a, b in pairs if (note := number_difference(a, b))]
            if outside:
                notes += [f"line {j + 1}: {note}" for note in outside]
            else:
                shown[j] = want_lines[i]
    if shown == want_lines:
        return None
    built = label.removeprefix("tree/")
    diff = difflib.unified_diff(
        want_lines, shown, f"golden/{label}", f"build/{built}", lineterm="", n=2
    )
    return "\n".join([*diff, *notes])


def number_difference(a: str, b: str) -> str | None:
    """Why two number tokens differ beyond tolerance, or None if they do not."""
    x, y = float(a), float(b)
    if x == y or (math.isnan(x) and math.isnan(y)):
        return None
    rel = INT_REL_TOL if INTEGER.fullmatch(a) and INTEGER.fullmatch(b) else FLOAT_REL_TOL
    tolerance = max(ABS_TOL, rel * max(abs(x), abs(y)))
    if abs(x - y) <= tolerance:
        return None
    return f"{a} -> {b}: differs by {abs(x - y):.3g}, tolerance {tolerance:.3g}"


def _split(text: str) -> list[str]:
    lines = []
    for line in text.split("\n"):
        lines += re.split(r"(?<=, )", line) if len(line) > WRAP else [line]
    return lines


def _skeleton(line: str) -> str:
    return NUMBER.sub("\0", line)


def compare_weights(model: str, want: ModelWeights, got: ModelWeights) -> list[str]:
    """Names, shapes and dtypes exactly; values within tolerance (see WEIGHT_*)."""
    if want.specs != got.specs:
        diff = difflib.unified_diff(
            [json.dumps(spec) for spec in want.specs],
            [json.dumps(spec) for spec in got.specs],
            f"golden/weights/{model}.npz",
            f"build/models/{model}/{{hash}}/model.json",
            lineterm="",
        )
        return [
            f"weights of {model}: names, shapes, dtypes or quantization differ\n" + "\n".join(diff)
        ]
    problems = []
    for spec in got.specs:
        name = spec["name"]
        a, b = want.arrays[name], got.arrays[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(
                f"weights of {model}: {name}: golden {a.dtype}{list(a.shape)}, "
                f"build {b.dtype}{list(b.shape)}"
            )
            continue
        if a.dtype.kind != "f":
            if not np.array_equal(a, b):
                where = np.argwhere(a != b)
                problems.append(
                    f"weights of {model}: {name}: {len(where)} values differ (exact), "
                    f"first at {tuple(int(i) for i in where[0])}"
                )
            continue
        x, y = a.astype(np.float64), b.astype(np.float64)
        tolerance = WEIGHT_ATOL + WEIGHT_RTOL * np.abs(x)
        if spec["quantization"] == "float16":
            biggest = np.maximum(np.abs(x), np.abs(y)).astype(np.float16)
            tolerance = tolerance + np.spacing(biggest).astype(np.float64)
        elif spec["quantization"] is not None:
            tolerance = tolerance + got.steps.get(name, 0.0)
        difference = np.where(np.isnan(x) & np.isnan(y), 0.0, np.abs(x - y))
        outside = ~(difference <= tolerance)  # NaN on one side only is outside
        if outside.any():
            worst = np.unravel_index(int(np.argmax(np.where(outside, difference, -1.0))), x.shape)
            index = tuple(int(i) for i in worst)
            problems.append(
                f"weights of {model}: {name}: {int(outside.sum())} of {x.size} values outside "
                f"tolerance; worst at {index}: golden {x[worst]:.9g}, build {y[worst]:.9g}, "
                f"differs by {difference[worst]:.3g}, tolerance {tolerance[worst]:.3g}"
            )
    return problems


# --- the golden tree ----------------------------------------------------------------------------


def _write_golden(got: Snapshot) -> None:
    shutil.rmtree(GOLDEN, ignore_errors=True)  # files the build no longer makes go too
    for key, text in got.texts.items():
        path = GOLDEN / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (GOLDEN / "weights").mkdir()
    for name, model in got.weights.items():
        specs = np.array(json.dumps(model.specs, indent=1))
        _save_npz(GOLDEN / "weights" / f"{name}.npz", {"__specs__": specs, **model.arrays})


def _read_golden() -> Snapshot:
    texts: dict[str, str] = {}
    model_weights: dict[str, ModelWeights] = {}
    for path in sorted(GOLDEN.rglob("*")):
        key = path.relative_to(GOLDEN).as_posix()
        if path.is_file() and key.startswith("weights/"):
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            specs = json.loads(arrays.pop("__specs__").item())
            model_weights[path.stem] = ModelWeights(specs, arrays)
        elif path.is_file():
            texts[key] = path.read_text()
    return Snapshot(texts, model_weights)


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray[Any, Any]]) -> None:
    """np.savez, with a fixed timestamp so that an unchanged build rewrites the same bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            data = io.BytesIO()
            np.lib.format.write_array(data, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data.getvalue())


# --- the comparator itself (no build) -----------------------------------------------------------


def test_numbers_within_tolerance_match() -> None:
    want = '{\n  "brotli_bytes": 36902,\n  "expected": [0.9960179, 3.1e-07]\n}\n'
    got = '{\n  "brotli_bytes": 36909,\n  "expected": [0.99601793, 3.5e-07]\n}\n'
    assert compare_text("report.json", want, got) is None


def test_a_number_outside_tolerance_shows_its_line() -> None:
    want = "a: 1\nweight_bytes: 39864\nb: 2\n"
    got = "a: 1\nweight_bytes: 41000\nb: 2\n"
    diff = compare_text("report.json", want, got)
    assert diff is not None
    assert "-weight_bytes: 39864\n+weight_bytes: 41000" in diff
    assert "line 2: 39864 -> 41000: differs by 1.14e+03, tolerance 410" in diff


def test_small_integers_and_floats_are_held_close() -> None:
    assert number_difference("8", "9") is not None  # a shape
    assert number_difference("0.9960179", "0.9970") is not None
    assert number_difference("0.9960179", "0.99601795") is None


def test_a_changed_word_or_version_fails() -> None:
    assert compare_text("x.json", '"format": "graph"\n', '"format": "layers"\n') is not None
    diff = compare_text("x.html", "tfjs-4.22.0/tf.min.js\n", "tfjs-4.22.1/tf.min.js\n")
    assert diff is not None and "+tfjs-4.22.1/tf.min.js" in diff


def test_a_long_line_shows_only_the_value_that_changed() -> None:
    values = [round(0.001 * i, 6) for i in range(100)]
    changed = [*values[:50], 0.5, *values[51:]]
    diff = compare_text("index.html", f"const v = {values};\n", f"const v = {changed};\n")
    assert diff is not None
    changes = [
        line
        for line in diff.splitlines()
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]
    assert changes == ["-0.05, ", "+0.5, "]


def test_hashes_and_digests_become_placeholders() -> None:
    digest, other = "ab" * 32, "cd" * 32
    text = f'{{"path": "models/digits/e212e989/a.bin", "sha256": "{digest}", "x": "{other}"}}'
    got = normalize(
        "models.json", text, {"digits": {"e212e989"}}, {digest: "models/digits/{hash:digits}/a.bin"}
    )
    assert json.loads(got) == {
        "path": "models/digits/{hash:digits}/a.bin",
        "sha256": "{sha256:models/digits/{hash:digits}/a.bin}",
        "x": "{sha256}",
    }


def _model(arrays: dict[str, np.ndarray[Any, Any]], quant: str | None = None) -> ModelWeights:
    specs = [
        {"name": k, "shape": list(v.shape), "dtype": str(v.dtype), "quantization": quant}
        for k, v in arrays.items()
    ]
    return ModelWeights(specs, arrays, {k: 0.01 for k in arrays} if quant == "uint8" else {})


def test_weights_one_ulp_apart_match_and_a_real_change_fails() -> None:
    kernel = np.random.default_rng(0).normal(0.0, 0.5, (3, 3, 1, 16)).astype(np.float32)
    flipped = (kernel.view(np.uint32) ^ np.uint32(1)).view(np.float32)  # CPU-style noise
    assert compare_weights("cnn", _model({"k": kernel}), _model({"k": flipped})) == []

    moved = kernel.copy()
    moved[1, 2, 0, 5] += 1e-3
    [problem] = compare_weights("cnn", _model({"k": kernel}), _model({"k": moved}))
    assert problem.startswith("weights of cnn: k: 1 of 144 values outside tolerance; worst at")
    assert "(1, 2, 0, 5)" in problem and "differs by 0.001" in problem


def test_quantized_weights_may_move_one_step() -> None:
    levels = np.arange(10, dtype=np.float32) * np.float32(0.01)
    one_step, two_steps = levels.copy(), levels.copy()
    one_step[3] += np.float32(0.01)
    two_steps[3] += np.float32(0.02)
    assert (
        compare_weights("m", _model({"w": levels}, "uint8"), _model({"w": one_step}, "uint8")) == []
    )
    assert compare_weights("m", _model({"w": levels}, "uint8"), _model({"w": two_steps}, "uint8"))


def test_weight_names_shapes_and_dtypes_must_match() -> None:
    want = _model({"w": np.zeros(3, np.float32)})
    [problem] = compare_weights("m", want, _model({"w": np.zeros(4, np.float32)}))
    assert '-{"name": "w", "shape": [3]' in problem and '+{"name": "w", "shape": [4]' in problem
    assert compare_weights("m", want, _model({"w": np.zeros(3, np.float32)}, "float16"))
