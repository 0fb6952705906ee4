"""The generated WeChat loader glue, run in Node against the strict wx simulator in tests/wx/.

The projects are real `bundler build` outputs (`targets = ["wechat"]`) of tf_keras models:
docs/wechat-layout.md is the contract between them and the glue. Each scenario runs steps (app
launches, loads, network faults, quota changes) in one Node process (tests/wx/run_scenario.cjs)
on one simulated phone, and every successful load must predict what the Keras model predicts,
within 1e-5.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import brotli
import numpy as np
import pytest
from conftest import needs_node

from bundler import build, limits, manifest
from bundler.render import render
from bundler.runtimes import ensure_tfjs

pytestmark = [pytest.mark.slow, needs_node]

WX = Path(__file__).resolve().parent / "wx"
RUNNER = WX / "run_scenario.cjs"
SELFTEST = WX / "selftest.cjs"
TFJS_VERSION = limits.DEFAULT_WECHAT_TFJS_VERSION
REMOTE_BASE = "https://models.example.com/bundles/"
USER = "wxfile://usr"
CACHE_DIR = "bundler-models"  # settings.cacheDir
CONCURRENCY = limits.WechatLimits().concurrent_requests
STORAGE_KEY_BYTES = limits.WechatLimits().storage_key_bytes
STORAGE_TOTAL_BYTES = limits.WechatLimits().storage_total_bytes
ATOL = 1e-5
GLUE_BUDGET = 24 * 1024  # it ships in the main package, beside the app
MB = 1024 * 1024


# --- the source models and the builds ---------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A tf_keras model saved as .h5, and what it predicts on the shared input."""

    h5: Path
    expected: np.ndarray


@dataclass(frozen=True)
class Project:
    """One `bundler build` output: <out>/wechat, <out>/remote, and the build's models.js."""

    wechat: Path
    remote: Path
    entries: dict[str, dict[str, Any]]
    expected: dict[str, np.ndarray]  # model name → what Keras predicts for X

    def entry(self, name: str) -> dict[str, Any]:
        return self.entries[name]

    def cache_dir(self, name: str) -> str:
        return f"{USER}/{CACHE_DIR}/{name}/{self.entries[name]['hash']}"

    def cached_files(self, name: str) -> dict[str, str]:
        """What a complete file cache of this model holds: file name → sha256 (raw files)."""
        entry = self.entries[name]
        files = {"model.json": entry["modelJson"]["sha256"]}
        for shard in entry["shards"]:
            files[shard["url"].rsplit("/", 1)[1]] = shard["rawSha256"]
        return files

    def file_count(self, name: str) -> int:
        return 1 + len(self.entries[name]["shards"])

    def shard_file(self, name: str, index: int) -> str:
        return str(self.entries[name]["shards"][index]["url"]).rsplit("/", 1)[1]


@dataclass(frozen=True)
class Builds:
    a: Project  # file cache: digits (graph, remote, 16 small shards); pkg, pkg_graph (package)
    b: Project  # digits retrained: a new version, remote
    s: Project  # storage cache: big (layers, remote, shards over 1 MB), digits (graph, remote)
    s2: Project  # storage cache: digits retrained
    c: Project  # flow (graph with control flow: predict/execute cannot run it), package delivery


X = np.random.default_rng(5).random((4, 64), dtype=np.float32)


def _mlp(tf_keras: Any, widths: Sequence[int], seed: int, path: Path) -> Source:
    rng = np.random.default_rng(seed)
    inp = tf_keras.Input((64,), name="pixels")
    x = inp
    for i, width in enumerate(widths):
        x = tf_keras.layers.Dense(width, activation="relu", name=f"hidden{i}")(x)
    out = tf_keras.layers.Dense(10, activation="softmax", name="probs")(x)
    model = tf_keras.Model(inp, out)
    values = []
    for w in model.get_weights():
        scale = 1.5 / np.sqrt(w.shape[0]) if w.ndim == 2 else 0.3
        values.append(rng.normal(0.0, scale, w.shape).astype(np.float32))
    model.set_weights(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "HDF5 ... is considered legacy"
        model.save(path)
    return Source(path, np.asarray(model(X), dtype=np.float32))


def _control_flow(tf: Any, path: Path) -> Source:
    """A SavedModel whose graph branches on its input (tf.cond): tfjs runs it with executeAsync."""
    rng = np.random.default_rng(7)

    class Flow(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(rng.normal(0.0, 0.2, (64, 10)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="pixels")])
        def __call__(self, pixels: Any) -> Any:
            logits = tf.matmul(pixels, self.w)
            return tf.cond(
                tf.reduce_sum(logits) > 0.0,
                lambda: tf.nn.softmax(logits),
                lambda: tf.nn.softmax(-logits),
            )

    flow = Flow()
    tf.saved_model.save(flow, str(path), signatures={"serving_default": flow.__call__})
    return Source(path, np.asarray(flow(X), dtype=np.float32))


def _model_toml(name: str, source: Path, fmt: str, delivery: str, shard: int | None) -> str:
    text = f"""
        [[models]]
        name = "{name}"
        source = "{source.name}"
        format = "{fmt}"
        quantize = "none"
        delivery = "{delivery}"
        """
    if shard:
        text += f"shard_bytes = {shard}\n"
    return textwrap.dedent(text)


def _build(
    root: Path, out: str, cache: str, models: list[tuple[str, Source, str, str, int | None]]
):
    text = textwrap.dedent(
        f"""
        [project]
        name = "glue-{out}"
        out = "{out}"
        targets = ["wechat"]

        [wechat]
        remote_base_url = "{REMOTE_BASE}"
        cache = "{cache}"
        """
    )
    for name, source, fmt, delivery, shard in models:
        text += _model_toml(name, source.h5, fmt, delivery, shard)
    path = root / f"bundle-{out}.toml"
    path.write_text(text)
    build.build(manifest.load(path))
    wechat = root / out / "wechat"
    js = (wechat / "bundler/models.js").read_text()
    entries = json.loads(
        js[js.index("module.exports = ") + len("module.exports = ") : js.rindex(";")]
    )
    expected = {name: source.expected for name, source, *_ in models}
    return Project(wechat, root / out / "remote", entries, expected)


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    import tensorflow as tf
    import tf_keras

    root = tmp_path_factory.mktemp("glue-builds")
    v1 = _mlp(tf_keras, (384, 384), 1, root / "digits_v1.h5")
    v2 = _mlp(tf_keras, (384, 384), 2, root / "digits_v2.h5")
    big = _mlp(tf_keras, (2048, 384), 3, root / "big.h5")
    small = 48 * 1024
    return Builds(
        a=_build(
            root,
            "a",
            "file",
            [
                ("digits", v1, "graph", "remote", small),
                ("pkg", big, "layers", "package", None),
                ("pkg_graph", v1, "graph", "package", None),
            ],
        ),
        b=_build(root, "b", "file", [("digits", v2, "graph", "remote", small)]),
        s=_build(
            root,
            "s",
            "storage",
            [("big", big, "layers", "remote", None), ("digits", v1, "graph", "remote", small)],
        ),
        s2=_build(root, "s2", "storage", [("digits", v2, "graph", "remote", small)]),
        c=_build(
            root,
            "c",
            "file",
            [("flow", _control_flow(tf, root / "flow_saved_model"), "graph", "package", None)],
        ),
    )


@pytest.fixture(scope="session")
def tfjs_dir() -> Path:
    return ensure_tfjs(TFJS_VERSION)


def settings_of(project: Project) -> dict[str, Any]:
    """The settings the generator rendered into this project's loader.js."""
    js = (project.wechat / "bundler/loader.js").read_text()
    line = next(x for x in js.splitlines() if x.startswith("const S = "))
    return dict(json.loads(line[len("const S = ") : -1]))


def copy_project(project: Project, tmp: Path, **settings: Any) -> Project:
    """A copy of the project to change, with loader.js rendered again with other settings."""
    wechat = tmp / "wechat-copy"
    shutil.copytree(project.wechat, wechat)
    if settings:
        glue = render_glue({**settings_of(project), **settings})
        (wechat / "bundler/loader.js").write_text(glue)
    return dataclasses.replace(project, wechat=wechat)


def merged_remote(tmp: Path, *projects: Project) -> Path:
    """One CDN folder holding the remote files of several builds (old and new versions)."""
    remote = tmp / "remote-merged"
    for p in projects:
        shutil.copytree(p.remote, remote, dirs_exist_ok=True)
    return remote


def render_glue(settings: dict[str, Any]) -> str:
    return render("wechat/bundler/loader.js.j2", settings=settings)


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


# --- running a scenario ----------------------------------------------------------------------


def run(
    project: Project,
    tmp: Path,
    steps: list[dict[str, Any]],
    tfjs: Path,
    *,
    limits_: dict[str, int] | None = None,
    delay_ms: int = 40,
) -> list[dict[str, Any]]:
    """Run the steps on one simulated phone; return the records of the steps that report.

    Those are "load", "page", "back", "memory" and "call"; the others only change the phone.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    out_dir = tmp / "outputs"
    out_dir.mkdir(exist_ok=True)
    x_file = out_dir / "x.bin"
    x_file.write_bytes(np.ascontiguousarray(X, dtype="<f4").tobytes())
    spec = [{"name": "pixels", "shape": list(X.shape), "dtype": "float32", "file": str(x_file)}]
    job = {
        "tfjs_dir": str(tfjs),
        "project": str(project.wechat),
        "user_dir": str(tmp / "usr"),
        "remote": {"dir": str(project.remote), "base_url": REMOTE_BASE},
        "limits": limits_ or {},
        "overflow": "fail",
        "server": {"delay_ms": delay_ms},
        "inputs": {name: spec for name in project.entries},
        "out_dir": str(out_dir),
        "result": str(tmp / "result.json"),
        "steps": steps,
    }
    job_path = tmp / "job.json"
    job_path.write_text(json.dumps(job))
    proc = subprocess.run(
        ["node", str(RUNNER), str(job_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp / "result.json").read_text())
    assert result["error"] is None, result["error"] + "\n" + proc.stderr[-2000:]
    return [r for r in result["records"] if r["op"] in ("load", "page", "back", "memory", "call")]


BACK = {"op": "back"}  # navigateBack: the current page's onUnload
MEMORY = {"op": "memory"}  # tfjs's live tensors, configPlugin calls and backends


def assert_loaded(record: dict[str, Any], project: Project) -> None:
    """Every load of the step succeeded, predicts what Keras predicts, with sane progress."""
    for result in record["results"]:
        assert result["ok"], result.get("error")
        fmt = project.entries[result["model"]]["format"]
        assert result["kind"] == ("GraphModel" if fmt == "graph" else "LayersModel")
        [out] = result["outputs"]
        got = np.fromfile(out["file"], dtype="<f4").reshape(out["shape"])
        np.testing.assert_allclose(got, project.expected[result["model"]], atol=ATOL, rtol=0)
        progress = result["progress"]
        assert progress[0] == 0 and progress[-1] == 1, progress
        assert progress == sorted(progress), f"progress went backwards: {progress}"
    assert record["overflows"] == 0, "the glue made more requests at once than WeChat allows"
    assert record["max_in_flight"] <= CONCURRENCY
    assert not record["console_error"], record["console_error"]


def model_files(state: dict[str, Any], name: str) -> dict[str, str]:
    """USER_DATA_PATH files under this model's cache folder (any version): path → sha256."""
    prefix = f"{USER}/{CACHE_DIR}/{name}/"
    return {f["path"]: f["sha256"] for f in state["user_files"] if f["path"].startswith(prefix)}


def assert_cache_complete(state: dict[str, Any], project: Project, name: str) -> None:
    want = {f"{project.cache_dir(name)}/{n}": h for n, h in project.cached_files(name).items()}
    assert model_files(state, name) == want


def assert_cache_sound(state: dict[str, Any], project: Project, name: str) -> None:
    """Whatever is cached is a right, whole file of the current version: no temp, no torn file."""
    want = {f"{project.cache_dir(name)}/{n}": h for n, h in project.cached_files(name).items()}
    for path, digest in model_files(state, name).items():
        assert path in want, f"unexpected file in the cache: {path}"
        assert want[path] == digest, f"damaged file in the cache: {path}"


def storage_keys(state: dict[str, Any], name: str) -> dict[str, int]:
    return {
        s["key"]: s["bytes"] for s in state["storage"] if s["key"].startswith(f"bundler:{name}:")
    }


# --- the glue itself ---------------------------------------------------------------------------


def test_glue_is_small_and_uses_only_what_wechat_has(builds: Builds) -> None:
    js = (builds.a.wechat / "bundler/loader.js").read_bytes()
    assert len(js) < GLUE_BUDGET, len(js)
    text = js.decode()
    assert re.findall(r"\brequire\('([^']+)'\)", text) == ["./models.js"]
    assert re.findall(r"require\.async\('([^']+)'\)", text) == ["../tfjs/index.js"]
    for banned in ("crypto.subtle", "fetch(", "TextDecoder", "Buffer", "process.", "atob("):
        assert banned not in text, banned
    assert not re.search(r"^\s*(import|export)\s", text, re.M)
    check = subprocess.run(["node", "--check", "-"], input=text, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr


def test_glue_sha256_and_base64_match_node(tmp_path: Path) -> None:
    """The glue's own SHA-256 and base64 (WeChat has neither), against Node's, at edge lengths."""
    glue = tmp_path / "loader.js"
    glue.write_text(render_glue(settings_of_default()))
    script = textwrap.dedent(
        f"""
        const vm = require('vm'), crypto = require('crypto'), fs = require('fs');
        const ctx = vm.createContext({{require: () => ({{}}), module: {{}}, wx: {{}}}});
        vm.runInContext(fs.readFileSync({json.dumps(str(glue))}, 'utf8'), ctx);
        const bad = [];
        for (const n of [0, 1, 2, 3, 55, 56, 57, 63, 64, 65, 119, 120, 1000, 100003]) {{
          const bytes = new Uint8Array(n).map((_, i) => (i * 131 + n) & 255);
          const want = crypto.createHash('sha256').update(bytes).digest('hex');
          if (ctx.sha256(bytes) !== want) bad.push(['sha256', n]);
          const b64 = Buffer.from(bytes).toString('base64');
          if (ctx.b64(bytes) !== b64) bad.push(['b64', n]);
          const back = Buffer.from(ctx.unb64(b64));
          if (Buffer.compare(back, Buffer.from(bytes)) !== 0) bad.push(['unb64', n]);
        }}
        console.log(JSON.stringify(bad));
        """
    )
    proc = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def settings_of_default() -> dict[str, Any]:
    return {
        "cache": "file",
        "cacheDir": CACHE_DIR,
        "concurrency": CONCURRENCY,
        "timeoutMs": 60000,
        "retries": 3,
        "storageKeyBytes": STORAGE_KEY_BYTES,
        "storageTotalBytes": STORAGE_TOTAL_BYTES,
    }


def test_the_builds_follow_the_contract(builds: Builds) -> None:
    """What the scenarios rely on: the planner's choices and the settings the glue gets."""
    assert settings_of(builds.a) == settings_of_default()
    assert settings_of(builds.s) == {**settings_of_default(), "cache": "storage"}
    a = builds.a.entries
    assert a["digits"]["delivery"] == "remote" and builds.a.file_count("digits") > CONCURRENCY
    assert a["pkg"]["delivery"] == "package" and len(a["pkg"]["subpackages"]) == 2
    assert a["pkg_graph"]["delivery"] == "package"
    assert builds.s.entries["big"]["shards"][0]["rawBytes"] > STORAGE_KEY_BYTES
    assert builds.a.entries["digits"]["hash"] != builds.b.entries["digits"]["hash"]


# --- the simulator -----------------------------------------------------------------------------


def test_simulator_refuses_what_wechat_refuses(tmp_path: Path, tfjs_dir: Path) -> None:
    project = tmp_path / "wechat"
    app = {
        "pages": ["pages/index/index"],
        "subPackages": [
            {"root": r, "pages": ["pages/index/index"]} for r in ("tfjs", "pkg-a", "pkg-b")
        ],
        "plugins": {"tfjsPlugin": {"version": "0.2.0", "provider": limits.TFJS_PLUGIN_PROVIDER}},
    }
    _write(project / "app.json", json.dumps(app))
    for root in ("pkg-a", "pkg-b"):
        _write(project / root / "index.js", "module.exports = {};\n")
    _write(project / "pkg-a/data/model.json", '{"a": 1}')
    _write(project / "pkg-a/data/weights.bin", b"\x01" * 64)
    _write(project / "pkg-a/data/weights.bin.br", brotli.compress(b"\x01" * 64))
    remote = tmp_path / "remote"
    _write(remote / "blob.bin", b"\x02" * 1000)
    proc = subprocess.run(
        ["node", str(SELFTEST), str(project), str(tmp_path / "usr"), str(remote), str(tfjs_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    c = json.loads(proc.stdout)["checks"]

    def failed(name: str, message: str, errno: int | None = None) -> None:
        assert not c[name]["ok"], (name, c[name])
        assert c[name]["errMsg"] == message, (name, c[name])
        if errno is not None:
            assert c[name]["errno"] == errno, (name, c[name])

    # Code package files: only once the subpackage is loaded, only kept types, root paths only.
    failed(
        "read_subpackage_before_load",
        "readFile:fail no such file or directory, open pkg-a/data/model.json",
        1300002,
    )
    assert c["read_subpackage_after_load"]["value"]["data"] == '{"a": 1}'
    assert c["read_leading_slash"]["ok"]
    failed(
        "read_dot_slash", "readFile:fail no such file or directory, open ./pkg-a/data/model.json"
    )
    failed(
        "read_dot_dot",
        "readFile:fail no such file or directory, open pkg-a/../pkg-a/data/model.json",
    )
    failed(
        "read_bin_dropped_at_upload",
        "readFile:fail no such file or directory, open pkg-a/data/weights.bin",
        1300002,
    )
    assert c["read_br_raw"]["ok"]
    assert c["read_compressed"]["value"]["data"] == {"byteLength": 64}
    failed("read_compressed_not_brotli", "readCompressedFile:fail decompress fail", 1301111)
    # Writing: USER_DATA_PATH only, existing folders, ArrayBuffer or string, within the quota.
    failed("write_package", "writeFile:fail permission denied, open pkg-a/data/x.json", 1300013)
    failed(
        "write_no_parent",
        f"writeFile:fail no such file or directory, open {USER}/nope/x.bin",
        1300002,
    )
    assert not c["write_typed_array"]["ok"]
    failed("write_empty", "writeFile:fail data to write is empty", 1301002)
    assert c["mkdir_recursive"]["ok"]
    failed("mkdir_exists", f"mkdir:fail file already exists {USER}/a/b", 1301005)
    failed("mkdir_recursive_exists", f"mkdir:fail file already exists {USER}/a/b", 1301005)
    assert c["write_ok"]["ok"]
    failed(
        "write_over_quota",
        "writeFile:fail the maximum size of the file storage limit is exceeded",
        1300202,
    )
    failed(
        "rename_missing",
        f"rename:fail no such file or directory, rename {USER}/nope.bin -> {USER}/a/x.bin",
        1300002,
    )
    failed("unlink_missing", f"unlink:fail no such file or directory {USER}/nope.bin", 1300002)
    failed("unlink_dir", f"unlink:fail operation not permitted, unlink {USER}/a", 1300001)
    failed("rmdir_not_empty", "rmdir:fail directory not empty", 1300066)
    assert c["readdir"]["value"]["files"] == ["one.bin"]
    failed("stat_missing", f"stat:fail no such file or directory {USER}/nope", 1300002)
    failed("access_missing", f"access:fail no such file or directory {USER}/nope", 1300002)
    assert c["rmdir_recursive"]["ok"]
    # getFileInfo: sha256 as asked, or md5 (32 hex digits) from an older client.
    assert c["file_info_sha256"]["value"]["digest"] == hashlib.sha256(b"\0" * 3).hexdigest()
    assert c["file_info_old_client"]["value"]["digest"] == hashlib.md5(b"\0" * 3).hexdigest()
    # Storage: 1 MB a key, the total (3 MB in this test) in all.
    failed("storage_key_over_1mb", "setStorage:fail exceed storage item max length")
    assert c["storage_key_ok"]["ok"] and c["storage_key_ok3"]["ok"]
    failed("storage_total", "setStorage:fail exceed storage max size 3Mb")
    failed("storage_missing", "getStorage:fail data not found")
    assert c["storage_info"]["value"]["limitSize"] == 3 * 1024
    assert c["storage_info"]["value"]["keys"] == ["k1", "k2", "k3"]
    # Network: https on registered domains only, ArrayBuffer bodies, 10 at once, timeouts.
    failed("request_http", 'request:fail invalid url "http://models.example.com/bundles/a"')
    failed("request_other_domain", "request:fail url not in domain list: https://evil.example.com")
    failed("request_package_path", "request:fail invalid url")
    assert c["request_404"]["ok"] and c["request_404"]["value"]["statusCode"] == 404
    assert c["request_arraybuffer"] == {
        "ok": True,
        "statusCode": 200,
        "isArrayBuffer": True,
        "byteLength": 1000,
    }
    eleven = c["request_eleven"]
    assert eleven["ok"] == 10 and eleven["maxInFlight"] == 10 and eleven["overflows"] == 2
    assert all("exceed max concurrent request count 10" in m for m in eleven["failed"])
    failed("request_timeout", "request:fail timeout")
    # wx.downloadFile: to a temporary file, progress by bytes; its own domain list; any status.
    download = c["download"]
    assert download["ok"] and download["value"]["statusCode"] == 200, download
    assert re.fullmatch(r"wxfile://tmp_\w+", download["value"]["tempFilePath"])
    assert download["progress"][-1] == {
        "progress": 100,
        "totalBytesWritten": 1000,
        "totalBytesExpectedToWrite": 1000,
    }
    assert c["download_read_temp"]["value"]["data"] == {"byteLength": 1000}
    assert c["download_404"]["ok"] and c["download_404"]["value"]["statusCode"] == 404
    failed(
        "download_http",
        'downloadFile:fail invalid url "http://models.example.com/bundles/blob.bin"',
    )
    failed("download_not_a_download_domain", "downloadFile:fail url not in domain list")
    failed("download_timeout", "downloadFile:fail timeout")
    # saveFile moves the temporary file into USER_DATA_PATH.
    assert c["save_temp"]["value"]["savedFilePath"] == f"{USER}/saved.bin"
    failed("save_temp_again", "saveFile:fail tempFilePath file not exist", 1301112)
    assert c["read_saved"]["value"]["data"] == {"byteLength": 1000}
    # request and downloadFile share the 10 at once.
    assert c["network_mixed"] == {"ok": 10, "maxInFlight": 10, "overflows": 2}
    # The app's JS sees no Node or browser API, and no Node module.
    assert c["globals_absent"]["value"] == []
    assert not c["node_require_from_app"]["ok"]
    assert "subpackage pkg-b is not loaded" in c["sync_require_unloaded_subpackage"]["errMsg"]
    assert c["tfjs_runtime"] == {"ok": True, "version": TFJS_VERSION, "backend": "cpu"}
    # tfjsPlugin: one backend per name (the simulator's stands on tfjs's cpu backend).
    assert c["plugin_good"] == {"ok": True, "backend": "wechat-webgl-1", "sum": 5}
    assert "is already registered in this app launch" in c["plugin_same_backend_name"]["errMsg"]
    assert c["plugin_backends"]["configs"] == 1  # the refused calls are not counted
    assert c["plugin_backends"]["value"] == [{"name": "wechat-webgl-1", "live": True, "lost": True}]
    assert "fetchFunc must be a function" in c["plugin_no_fetch"]["errMsg"]
    assert "backendName must be" in c["plugin_bad_name"]["errMsg"]
    assert "not defined" in c["plugin_unknown"]["errMsg"]


def test_the_simulator_catches_a_glue_over_the_request_limit(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    """Rendered with concurrency 16, the glue breaks WeChat's limit and the simulator says so."""
    project = copy_project(builds.a, tmp_path, concurrency=16)
    [load] = run(project, tmp_path / "run", [{"op": "load", "models": ["digits"]}], tfjs_dir)
    assert load["overflows"] > 0
    assert load["max_in_flight"] == CONCURRENCY


# --- package delivery ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pkg", "pkg_graph"])
def test_package_delivery(builds: Builds, tfjs_dir: Path, tmp_path: Path, name: str) -> None:
    project = builds.a
    [load] = run(project, tmp_path, [{"op": "load", "models": [name]}], tfjs_dir)
    assert_loaded(load, project)
    assert load["requests"] == 0 and load["files_written"] == 0 and load["storage_writes"] == 0
    roots = project.entries[name]["subpackages"]
    assert load["require_async"] == ["tfjs/index.js", *(f"{r}/index.js" for r in roots)]
    assert load["state"]["user_files"] == []


def test_demo_page_configures_the_plugin_and_predicts(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    """The generated page's onLoad: loadModel (setting tfjsPlugin up once), predict, the times."""
    page = {"op": "page", "page": "pages/pkg/index"}
    first, _, second, _ = run(builds.a, tmp_path, [page, BACK, page, BACK], tfjs_dir)
    for opened in (first, second):
        assert opened["data"]["status"] == "ready", opened["data"]
        assert opened["data"]["error"] == "" and opened["data"]["progress"] == 100
        assert opened["data"]["loadMs"] >= 0 and opened["data"]["predictMs"] >= 0
    [config] = first["plugin_configs"]
    assert config["backendName"].startswith("wechat-webgl-")
    assert second["plugin_configs"] == []  # the backend of the first visit serves the second


def _memory(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["op"] == "memory"]


def test_one_plugin_setup_and_one_backend_per_app_life(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    """Pages come and go: tfjsPlugin is configured once per app launch, on one backend, made
    again only when the phone loses the WebGL context; each page releases its model."""
    pkg = {"op": "page", "page": "pages/pkg/index"}
    graph = {"op": "page", "page": "pages/pkg_graph/index"}
    steps = [
        *[pkg, BACK, pkg, BACK, graph, BACK, MEMORY],
        *[{"op": "lose_webgl_context"}, pkg, MEMORY, BACK, MEMORY],
        *[{"op": "launch"}, graph, BACK, MEMORY],
    ]
    records = run(builds.a, tmp_path, steps, tfjs_dir)
    for opened in (r for r in records if r["op"] == "page"):
        assert opened["data"]["status"] == "ready", opened["data"]
    navigated, after_loss, closed, relaunched = _memory(records)

    assert navigated["plugin_configs"] == 1
    [backend] = navigated["backends"]
    assert backend["live"] and not backend["lost"] and navigated["backend"] == backend["name"]
    assert navigated["tensors"] == 0  # every page released its model on onUnload

    # The lost context's backend is removed; one new backend, on a new canvas, serves the page.
    assert after_loss["plugin_configs"] == 2
    old, new = after_loss["backends"]
    assert old == {"name": backend["name"], "live": False, "lost": True}
    assert new["live"] and not new["lost"] and after_loss["backend"] == new["name"]
    assert after_loss["tensors"] > 0 and closed["tensors"] == 0

    # A new launch is a new app life: one setup again.
    assert relaunched["plugin_configs"] == 1 and len(relaunched["backends"]) == 1
    assert relaunched["tensors"] == 0


def test_the_loader_caches_models_until_released(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    """loadModel again: the same model, nothing read; release(name) and dispose() free them."""
    project = builds.a
    keep = {"op": "load", "models": ["digits"], "release": False}

    def loader(fn: str, *args: str) -> dict[str, Any]:
        return {"op": "call", "module": "bundler/loader.js", "fn": fn, "args": list(args)}

    steps = [
        *[keep, keep, MEMORY, loader("release", "digits"), MEMORY],
        *[keep, {"op": "load", "models": ["pkg"], "release": False}, MEMORY],
        *[{"op": "lose_webgl_context"}, keep, MEMORY],
        *[loader("setup"), loader("setup"), MEMORY, loader("dispose"), MEMORY],
        loader("release", "digits"),
    ]
    records = run(project, tmp_path, steps, tfjs_dir)
    cold, cached, held, released, emptied, reread, pkg, both = records[:8]
    lost, after_loss, _, _, setups, _, disposed, again = records[8:]

    assert_loaded(cold, project)
    assert cold["requests"] == project.file_count("digits")
    [result] = cached["results"]
    assert result["ok"] and result["same_object_as_last_step"] and result["progress"] == [1]
    assert cached["requests"] == cached["digests"] == cached["files_written"] == 0
    assert cached["require_async"] == []
    assert held["tensors"] > 0

    assert released["value"] is True and emptied["tensors"] == 0  # release disposed it
    assert_loaded(reread, project)  # loaded again from the file cache, not the network
    assert not reread["results"][0]["same_object_as_last_step"]
    assert reread["requests"] == 0 and reread["digests"] == project.file_count("digits")
    assert_loaded(pkg, project)
    assert both["tensors"] > held["tensors"]

    # A lost WebGL context takes the loaded models with it: digits is loaded again (from the
    # cache), pkg is gone, and the new backend was set up once.
    assert_loaded(lost, project)
    assert not lost["results"][0]["same_object_as_last_step"] and lost["requests"] == 0
    assert after_loss["tensors"] == held["tensors"] and after_loss["plugin_configs"] == 2
    assert setups["plugin_configs"] == 2  # setup() again: nothing new to set up
    assert disposed["tensors"] == 0  # dispose() released every model
    assert again["value"] is False


def test_demo_page_runs_a_graph_with_control_flow(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    """predict (execute) cannot run a graph that branches: the page falls back to executeAsync."""
    page, _, memory = run(
        builds.c, tmp_path, [{"op": "page", "page": "pages/flow/index"}, BACK, MEMORY], tfjs_dir
    )
    assert page["data"]["status"] == "ready", page["data"]
    assert page["data"]["result"].startswith("largest output: #")
    assert memory["tensors"] == 0


def test_demo_page_disposes_its_inputs_when_predict_throws(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    """A prediction that throws (here: an input of the wrong shape) leaves no tensor behind."""
    project = copy_project(builds.a, tmp_path)
    page_js = project.wechat / "pages/pkg_graph/index.js"
    text = page_js.read_text()
    assert '"shape": [1, 64]' in text
    page_js.write_text(text.replace('"shape": [1, 64]', '"shape": [1, 63]'))
    model_json = json.loads(
        (project.wechat / project.entry("pkg_graph")["modelJson"]["path"]).read_text()
    )
    weights = sum(len(group["weights"]) for group in model_json["weightsManifest"])
    steps = [{"op": "page", "page": "pages/pkg_graph/index"}, MEMORY, BACK, MEMORY]
    page, opened, _, closed = run(project, tmp_path / "run", steps, tfjs_dir)
    assert page["data"]["status"] == "failed" and "shape" in page["data"]["error"], page["data"]
    assert opened["tensors"] == weights  # the model's weights, and nothing of the prediction
    assert closed["tensors"] == 0


def test_package_bin_files_are_invisible(builds: Builds, tfjs_dir: Path, tmp_path: Path) -> None:
    """Upload drops `.bin`: a models.js pointing at one fails, naming the model and the file."""
    project = copy_project(builds.a, tmp_path)
    entries = json.loads(json.dumps(project.entries))
    shard = entries["pkg_graph"]["shards"][0]
    bin_path = shard["path"][: -len(".br")]
    raw = brotli.decompress((project.wechat / shard["path"]).read_bytes())
    _write(project.wechat / bin_path, raw)
    shard["path"] = bin_path
    _write(project.wechat / "bundler/models.js", f"module.exports = {json.dumps(entries)};\n")
    [load] = run(project, tmp_path / "run", [{"op": "load", "models": ["pkg_graph"]}], tfjs_dir)
    [result] = load["results"]
    assert not result["ok"]
    assert result["error"] == (
        f'loadModel("pkg_graph"): cannot read {bin_path}: '
        f"readCompressedFile:fail no such file or directory, open {bin_path}"
    )


def test_unknown_model_is_rejected(builds: Builds, tfjs_dir: Path, tmp_path: Path) -> None:
    [load] = run(builds.b, tmp_path, [{"op": "load", "models": ["digit"]}], tfjs_dir)
    [result] = load["results"]
    assert not result["ok"] and result["error_is_error"]
    assert result["error"] == 'loadModel("digit"): no such model in this build (it has: digits)'


# --- remote delivery, file cache ---------------------------------------------------------------


def test_remote_cold_then_warm(builds: Builds, tfjs_dir: Path, tmp_path: Path) -> None:
    project = builds.a
    load = {"op": "load", "models": ["digits"]}
    cold, warm = run(project, tmp_path, [load, {"op": "launch"}, load], tfjs_dir)
    n = project.file_count("digits")

    assert_loaded(cold, project)
    assert cold["requests"] == n and len(set(cold["request_urls"])) == n
    assert cold["by_api"] == {"downloadFile": n}  # to files: no body in the JS heap
    assert cold["max_in_flight"] == CONCURRENCY == cold["server_max_in_flight"]
    assert cold["files_written"] == n
    assert_cache_complete(cold["state"], project, "digits")
    assert cold["results"][0]["warnings"] == []
    assert "tfjs/index.js" in cold["require_async"]

    assert_loaded(warm, project)
    assert warm["requests"] == 0 and warm["files_written"] == 0 and warm["server_requests"] == []
    # Warm files are checked by the native digest (getFileInfo), not by hashing them in JS.
    assert warm["digests"] == n
    assert_cache_complete(warm["state"], project, "digits")


def test_new_version_replaces_the_old_one(builds: Builds, tfjs_dir: Path, tmp_path: Path) -> None:
    v1 = dataclasses.replace(builds.a, remote=merged_remote(tmp_path, builds.a, builds.b))
    v2 = builds.b
    load = {"op": "load", "models": ["digits"]}
    steps = [load, {"op": "launch", "project": str(v2.wechat)}, load, {"op": "launch"}, load]
    first, second, third = run(v1, tmp_path / "run", steps, tfjs_dir)
    assert_loaded(first, v1)
    assert_cache_complete(first["state"], v1, "digits")
    assert_loaded(second, v2)
    assert second["requests"] == v2.file_count("digits")
    assert_cache_complete(second["state"], v2, "digits")  # and nothing of v1 is left
    assert_loaded(third, v2)
    assert third["requests"] == 0


def test_network_failing_halfway(builds: Builds, tfjs_dir: Path, tmp_path: Path) -> None:
    project = builds.a
    load = {"op": "load", "models": ["digits"]}
    steps = [
        {"op": "server", "fail_after": 5},
        load,
        {"op": "server", "fail_after": None},
        load,
        {"op": "launch"},
        load,
    ]
    broken, healed, warm = run(project, tmp_path, steps, tfjs_dir)
    [result] = broken["results"]
    assert not result["ok"] and result["error_is_error"]
    assert re.fullmatch(
        r'loadModel\("digits"\): could not download (group1-shard\d+of\d+\.bin|model\.json) '
        r"\(https://models\.example\.com/bundles/digits/\w+/\S+\): "
        r"downloadFile:fail net::ERR_CONNECTION_RESET \(4 attempts at most\)",
        result["error"],
    ), result["error"]
    assert broken["ms"] >= 500 + 1000 + 2000, "retries without back-off"
    assert broken["overflows"] == 0 and broken["max_in_flight"] <= CONCURRENCY
    kept = model_files(broken["state"], "digits")
    assert 0 < len(kept) < project.file_count("digits")
    assert_cache_sound(broken["state"], project, "digits")

    assert_loaded(healed, project)
    assert healed["requests"] == project.file_count("digits") - len(kept)  # only what was missing
    assert_cache_complete(healed["state"], project, "digits")
    assert_loaded(warm, project)
    assert warm["requests"] == 0


def test_full_quota_loads_from_memory(builds: Builds, tfjs_dir: Path, tmp_path: Path) -> None:
    project = builds.a
    app_file = f"{USER}/app/photos.bin"
    load = {"op": "load", "models": ["digits"]}
    steps = [
        {"op": "app_file", "path": app_file, "bytes": 200 * 1024},
        load,
        {"op": "launch"},
        load,
    ]
    quota = 500 * 1024  # the model needs ~700 KB
    first, second = run(project, tmp_path, steps, tfjs_dir, limits_={"userDataBytes": quota})
    for load in (first, second):
        assert_loaded(load, project)
        assert load["requests"] == project.file_count("digits")
        [warning] = load["results"][0]["warnings"]
        assert warning.startswith(
            'loadModel("digits"): the file cache is full (saveFile:fail the maximum size of the '
            "file storage limit is exceeded): the model was loaded from memory"
        ), warning
        assert load["console_warn"] == [f"[bundler] {warning}"]
        assert model_files(load["state"], "digits") == {}  # the partial copy is gone
        assert [f["path"] for f in load["state"]["user_files"]] == [app_file]
        assert load["state"]["user_bytes"] <= quota


def test_corrupted_cached_shard_is_fetched_again(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    project = builds.a
    damaged = f"{project.cache_dir('digits')}/{project.shard_file('digits', 2)}"
    load = {"op": "load", "models": ["digits"]}
    steps = [load, {"op": "corrupt_file", "path": damaged}, {"op": "launch"}, load]
    cold, healed = run(project, tmp_path, steps, tfjs_dir)
    assert_loaded(cold, project)
    assert_loaded(healed, project)
    assert healed["request_urls"] == [project.entries["digits"]["shards"][2]["url"]]
    assert_cache_complete(healed["state"], project, "digits")


def test_a_corrupt_download_is_retried(builds: Builds, tfjs_dir: Path, tmp_path: Path) -> None:
    project = builds.a
    url = project.entries["digits"]["shards"][1]["url"]
    steps = [
        {"op": "server", "corrupt_once": [url[len(REMOTE_BASE) :]]},
        {"op": "load", "models": ["digits"]},
    ]
    [load] = run(project, tmp_path, steps, tfjs_dir)
    assert_loaded(load, project)
    assert load["requests"] == project.file_count("digits") + 1
    assert load["request_urls"].count(url) == 2
    assert_cache_complete(load["state"], project, "digits")


def test_two_concurrent_loads_share_one_download(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    project = builds.a
    [load] = run(project, tmp_path, [{"op": "load", "models": ["digits", "digits"]}], tfjs_dir)
    assert_loaded(load, project)
    assert [r["same_object_as_first"] for r in load["results"]] == [True, True]
    assert load["requests"] == project.file_count("digits")
    assert load["files_written"] == project.file_count("digits")


def test_timeouts_are_retried_then_reported(builds: Builds, tfjs_dir: Path, tmp_path: Path) -> None:
    project = copy_project(builds.a, tmp_path, timeoutMs=200, retries=1, retryDelayMs=50)
    steps = [{"op": "server", "delay_ms": 1000}, {"op": "load", "models": ["digits"]}]
    [load] = run(project, tmp_path / "run", steps, tfjs_dir)
    [result] = load["results"]
    assert not result["ok"]
    assert result["error"].startswith('loadModel("digits"): could not download ')
    assert result["error"].endswith("downloadFile:fail timeout (2 attempts at most)")
    assert load["overflows"] == 0
    assert_cache_sound(load["state"], project, "digits")


def test_an_existing_version_folder_is_kept(builds: Builds, tfjs_dir: Path, tmp_path: Path) -> None:
    """One damaged file: only it is fetched again, into the folder that exists (mkdir answers
    "file already exists" there, recursive or not, and that is no failure)."""
    project = builds.a
    damaged = f"{project.cache_dir('digits')}/{project.shard_file('digits', 3)}"
    load = {"op": "load", "models": ["digits"]}
    steps = [load, {"op": "corrupt_file", "path": damaged}, {"op": "launch"}, load]
    _, healed = run(project, tmp_path, steps, tfjs_dir)
    assert_loaded(healed, project)
    assert healed["results"][0]["warnings"] == [] and healed["console_warn"] == []
    assert healed["request_urls"] == [project.entries["digits"]["shards"][3]["url"]]
    assert healed["files_written"] == 1
    assert_cache_complete(healed["state"], project, "digits")


def test_an_md5_digest_from_an_older_client_keeps_the_cache(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    """getFileInfo answers md5 (32 hex digits) though sha256 was asked: the files are hashed in
    JS instead, the cache is used, and a damaged file is still caught."""
    project = builds.a
    damaged = f"{project.cache_dir('digits')}/{project.shard_file('digits', 1)}"
    load = {"op": "load", "models": ["digits"]}
    old_client = {"op": "client", "client": {"getFileInfoDigest": "md5"}}
    steps = [
        *[old_client, load, {"op": "launch"}, load],
        *[{"op": "corrupt_file", "path": damaged}, {"op": "launch"}, load],
    ]
    cold, warm, healed = run(project, tmp_path, steps, tfjs_dir)
    assert_loaded(cold, project)
    assert_cache_complete(cold["state"], project, "digits")  # downloads checked in JS
    assert_loaded(warm, project)
    assert warm["requests"] == 0 and warm["files_written"] == 0
    assert_cache_complete(warm["state"], project, "digits")
    assert_loaded(healed, project)
    assert healed["request_urls"] == [project.entries["digits"]["shards"][1]["url"]]
    assert_cache_complete(healed["state"], project, "digits")


def test_remote_files_are_downloaded_to_files_with_progress_by_bytes(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    """wx.downloadFile to a temporary file, checked there and moved into the cache: progress
    moves within each file, by bytes, not only when a whole file has arrived."""
    project = copy_project(builds.s, tmp_path, cache="file")  # big: shards over 1 MB
    n = project.file_count("big")
    [load] = run(project, tmp_path / "run", [{"op": "load", "models": ["big"]}], tfjs_dir)
    assert_loaded(load, project)
    assert load["by_api"] == {"downloadFile": n}
    assert load["files_written"] == n and load["bytes_written"] == load["bytes_downloaded"]
    assert_cache_complete(load["state"], project, "big")
    progress = load["results"][0]["progress"]
    assert len(set(progress)) > 2 * n, progress


def test_stale_caches_are_removed_a_few_at_a_time(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    """Cache folders of models this build does not have (renamed, removed, now in a package) or
    of older versions go at the first load of a launch, at most sweepLimit of them per launch."""
    project = copy_project(builds.a, tmp_path, sweepLimit=4)
    cache = f"{USER}/{CACHE_DIR}"
    stale = [f"{cache}/renamed{i}/0badc0de/model.json" for i in range(8)] + [
        f"{cache}/digits/deadbeef/model.json",  # an older version
        f"{cache}/pkg/1234abcd/model.json",  # now delivered in a package
    ]
    app_file = f"{USER}/app/photos.bin"
    setup = [{"op": "app_file", "path": p, "bytes": 100} for p in [*stale, app_file]]
    load = {"op": "load", "models": ["pkg"]}
    steps = [*setup, load, {"op": "launch"}, load, {"op": "launch"}, load]
    records = run(project, tmp_path / "run", steps, tfjs_dir)

    def left(record: dict[str, Any]) -> list[str]:
        return [f["path"] for f in record["state"]["user_files"] if f["path"] in stale]

    assert [len(left(r)) for r in records] == [6, 2, 0]  # of 10
    for record in records:
        assert_loaded(record, project)
        assert app_file in [f["path"] for f in record["state"]["user_files"]]

    # Storage: keys of other models and versions go; the app's keys and the current version stay.
    s = builds.s
    current = f"bundler:digits:{s.entries['digits']['hash']}"
    keys = [
        "bundler:gone:0badc0de",
        "bundler:gone:0badc0de:model.json:0",
        "bundler:digits:deadbeef",
    ]
    steps = [
        *[{"op": "storage_value", "key": k, "value": "x"} for k in keys],
        {"op": "app_storage", "key": "user-settings", "bytes": 10},
        {"op": "load", "models": ["digits"]},
    ]
    [load] = run(s, tmp_path / "storage", steps, tfjs_dir)
    assert_loaded(load, s)
    remaining = {x["key"] for x in load["state"]["storage"]}
    assert not remaining & set(keys)
    assert "user-settings" in remaining and current in remaining


# --- remote delivery, storage cache ------------------------------------------------------------


def test_storage_cold_then_warm(builds: Builds, tfjs_dir: Path, tmp_path: Path) -> None:
    project = builds.s
    load = {"op": "load", "models": ["big"]}
    cold, warm = run(project, tmp_path, [load, {"op": "launch"}, load], tfjs_dir)
    digest = project.entries["big"]["hash"]
    shard = project.shard_file("big", 0)

    assert_loaded(cold, project)
    assert cold["requests"] == project.file_count("big")
    keys = storage_keys(cold["state"], "big")
    assert f"bundler:big:{digest}" in keys and f"bundler:big:{digest}:model.json:0" in keys
    assert len([k for k in keys if k.startswith(f"bundler:big:{digest}:{shard}:")]) >= 3
    assert max(keys.values()) <= STORAGE_KEY_BYTES
    assert cold["state"]["storage_bytes"] <= STORAGE_TOTAL_BYTES
    assert cold["state"]["user_files"] == []

    assert_loaded(warm, project)
    assert warm["requests"] == 0 and warm["storage_writes"] == 0


def test_storage_new_version_and_corrupt_chunk(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    v1 = dataclasses.replace(builds.s, remote=merged_remote(tmp_path, builds.s, builds.s2))
    v2 = builds.s2
    old, new = v1.entries["digits"]["hash"], v2.entries["digits"]["hash"]
    shard = v2.shard_file("digits", 4)
    load = {"op": "load", "models": ["digits"]}
    steps = [
        {"op": "app_storage", "key": "user-settings", "bytes": 1000},
        load,
        {"op": "launch", "project": str(v2.wechat)},
        load,
        {"op": "corrupt_storage", "key": f"bundler:digits:{new}:{shard}:0"},
        {"op": "launch"},
        load,
        {"op": "storage_value", "key": f"bundler:digits:{new}", "value": "not an index"},
        {"op": "launch"},
        load,
    ]
    first, second, healed, refetched = run(v1, tmp_path / "run", steps, tfjs_dir)
    assert_loaded(first, v1)
    assert all(
        k.startswith(f"bundler:digits:{old}") for k in storage_keys(first["state"], "digits")
    )
    assert_loaded(second, v2)
    keys = storage_keys(second["state"], "digits")
    assert keys and all(k.startswith(f"bundler:digits:{new}") for k in keys)  # v1 removed
    assert len(keys) == 1 + v2.file_count("digits")
    assert_loaded(healed, v2)
    assert healed["request_urls"] == [v2.entries["digits"]["shards"][4]["url"]]
    assert any(s["key"] == "user-settings" for s in healed["state"]["storage"])
    assert_loaded(refetched, v2)  # an unreadable index: everything is fetched and saved again
    assert refetched["requests"] == v2.file_count("digits")
    assert storage_keys(refetched["state"], "digits") == keys


def test_storage_limit_loads_from_memory(builds: Builds, tfjs_dir: Path, tmp_path: Path) -> None:
    """The app already keeps 9 MB in storage: the model (5 MB in base64) cannot be saved."""
    project = builds.s
    steps = [
        {"op": "app_storage", "key": "app-data", "bytes": 9 * MB},
        {"op": "load", "models": ["big"]},
    ]
    [load] = run(project, tmp_path, steps, tfjs_dir)
    assert_loaded(load, project)
    [warning] = load["results"][0]["warnings"]
    assert re.fullmatch(
        r'loadModel\("big"\): storage has \d+ bytes free, the model needs \d+: '
        r"the model was loaded from memory and will be downloaded again next time",
        warning,
    ), warning
    assert storage_keys(load["state"], "big") == {}
    assert [s["key"] for s in load["state"]["storage"]] == ["app-data"]
    assert load["storage_writes"] == 0


def test_storage_quota_error_while_saving_is_not_fatal(
    builds: Builds, tfjs_dir: Path, tmp_path: Path
) -> None:
    """getStorageInfo said there was room, then setStorage says "exceed storage max size 10Mb"."""
    project = copy_project(builds.s, tmp_path, storageTotalBytes=64 * MB)
    steps = [
        {"op": "app_storage", "key": "app-data", "bytes": 6 * MB},
        {"op": "load", "models": ["big"]},
    ]
    # The phone reports 64 MB in getStorageInfo and enforces 10 MB.
    [load] = run(
        project, tmp_path / "run", steps, tfjs_dir, limits_={"storageInfoLimitBytes": 64 * MB}
    )
    assert_loaded(load, project)
    [warning] = load["results"][0]["warnings"]
    assert warning.startswith(
        'loadModel("big"): could not save to storage (setStorage:fail exceed storage max size '
        "10Mb): the model was loaded from memory"
    ), warning
    assert load["storage_writes"] > 0
    assert storage_keys(load["state"], "big") == {}  # no partial version left behind
    assert [s["key"] for s in load["state"]["storage"]] == ["app-data"]
