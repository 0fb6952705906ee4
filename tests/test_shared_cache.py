"""The shared build cache, against a real S3-compatible server: moto's server mode, started
here on 127.0.0.1 (a separate process speaking HTTP, not an in-process mock)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_node

from bundler import build, manifest, starter
from bundler.errors import ManifestError

BUCKET = "team-cache"
URL = f"s3://{BUCKET}/bundler"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _moto(port: int) -> subprocess.Popen[bytes]:
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    pytest.fail("moto_server did not start")


def _aws(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """The standard AWS settings, pointing at `endpoint`, with test credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """moto_server on 127.0.0.1; yields its endpoint URL."""
    port = _free_port()
    proc = _moto(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def aws(server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The standard AWS settings pointing at the server, and an empty bucket."""
    import boto3

    _aws(monkeypatch, server)
    s3 = boto3.client("s3")
    existing = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
    if BUCKET in existing:
        for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    else:
        s3.create_bucket(Bucket=BUCKET)
    return server


def checkout(root: Path) -> Path:
    """A clean checkout: the manifest and its model, no cache, no bundle."""
    starter.write(root)
    text = (
        (root / "bundle.toml")
        .read_text()
        .replace('targets = ["wechat", "web"]', 'targets = ["web"]')
    )
    text = text.replace("[project]\n", f'[project]\ncache_dir = "{URL}"\n', 1)
    text = text.replace(f'name = "{root.name}"', 'name = "team-app"', 1)
    (root / "bundle.toml").write_text(text)
    return root


def _build_at_once(roots: list[Path], *options: str) -> list[bytes]:
    """`bundler build` of each checkout, all at once in their own processes; their stderr."""
    bundler = Path(sys.executable).with_name("bundler")
    procs = [
        subprocess.Popen(
            [str(bundler), "build", *options, str(root / "bundle.toml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for root in roots
    ]
    said = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        said.append(err)
    return said


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@needs_node
def test_a_second_checkout_converts_and_verifies_nothing(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    first = build.build(manifest.load(checkout(tmp_path / "a") / "bundle.toml"))
    assert first.converted == ["starter"]
    # The second machine has no Node and no npm packages: everything comes from the store.
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("BUNDLER_NODE_CACHE", str(tmp_path / "node"))
    said: list[str] = []
    second = build.build(manifest.load(checkout(tmp_path / "b") / "bundle.toml"), said.append)
    assert second.converted == [] and second.reused == second.fetched == ["starter"]
    assert "fetched starter from the shared cache" in said
    assert not [
        line
        for line in said
        if line.startswith(("verifying", "running the source", "building the tfjs"))
    ]
    assert tree(tmp_path / "b" / "dist") == tree(tmp_path / "a" / "dist")
    local = tmp_path / "b" / ".bundler-cache"
    assert (local / "models").is_dir(), "a hit downloads once"
    # The runtime file and the large files' compressed forms came from the store too.
    assert list((local / "runtimes").iterdir()) and list((local / "compressed").iterdir())
    s3 = boto3.client("s3")
    derived = {
        o["Key"].split("/")[2]
        for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]
        if "/derived/" in o["Key"]
    }
    assert derived == {"runtime-specs", "runtimes", "compressed"}
    assert not (tmp_path / "node").exists()


@needs_node
def test_a_damaged_object_is_converted_again(aws: str, tmp_path: Path) -> None:
    import boto3

    build.build(manifest.load(checkout(tmp_path / "a") / "bundle.toml"))
    s3 = boto3.client("s3")
    blobs = [
        o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"] if "/blobs/" in o["Key"]
    ]
    for key in blobs:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"damaged")
    said: list[str] = []
    again = build.build(manifest.load(checkout(tmp_path / "b") / "bundle.toml"), said.append)
    assert again.converted == ["starter"]
    assert [line for line in said if line.startswith("building the tfjs")]
    assert tree(tmp_path / "b" / "dist") == tree(tmp_path / "a" / "dist")
    # The store healed: a third checkout reuses what the second published.
    said.clear()
    third = build.build(manifest.load(checkout(tmp_path / "c") / "bundle.toml"), said.append)
    assert third.converted == []
    assert not [line for line in said if line.startswith("building the tfjs")]
    assert tree(tmp_path / "c" / "dist") == tree(tmp_path / "a" / "dist")


@needs_node
def test_an_unreachable_store_is_said_once_and_the_build_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _aws(monkeypatch, f"http://127.0.0.1:{_free_port()}")
    result = build.build(manifest.load(checkout(tmp_path / "a") / "bundle.toml"))
    assert result.converted == ["starter"]
    said = [w for w in result.report.warnings if "shared cache" in w]
    assert len(said) == 1
    assert said[0].startswith(f"the shared cache {URL} could not be read (")
    assert said[0].endswith(
        "this build made here what it could not fetch, and keeps it in "
        f"{tmp_path / 'a' / '.bundler-cache'}"
    )


def test_the_cache_url_and_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = checkout(tmp_path / "a")
    config = manifest.load(root / "bundle.toml")
    assert config.project.remote_cache == URL
    assert config.project.cache_dir == root / ".bundler-cache"
    monkeypatch.setenv("BUNDLER_CACHE", "s3://Bad_Bucket")
    with pytest.raises(ManifestError) as info:
        manifest.load(root / "bundle.toml")
    assert info.value.problems == (
        'BUNDLER_CACHE: "s3://Bad_Bucket" is not a shared cache URL; expected '
        '"s3://<bucket>/<prefix>" or a folder',
    )
    monkeypatch.setenv("BUNDLER_CACHE", "ci-cache")
    config = manifest.load(root / "bundle.toml")
    assert config.project.remote_cache is None
    assert config.project.cache_dir == root / "ci-cache"
    shutil.rmtree(root)


def test_require_cache_makes_an_unusable_store_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bundler.cli import main

    port = _free_port()
    _aws(monkeypatch, f"http://127.0.0.1:{port}")
    root = checkout(tmp_path / "a")
    monkeypatch.chdir(root)
    assert main(["build", "--require-cache", "bundle.toml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: the shared cache {URL} could not be read (")
    assert err[-1].endswith(
        "and --require-cache forbids building without it; check AWS_ENDPOINT_URL and the "
        "credentials, or build without --require-cache"
    )
    assert not (root / "dist").exists()
    text = (root / "bundle.toml").read_text().replace(f'cache_dir = "{URL}"\n', "")
    (root / "bundle.toml").write_text(text)
    assert main(["build", "--require-cache", "bundle.toml"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: bundle.toml: --require-cache needs a shared cache: set cache_dir = "
        '"s3://<bucket>/<prefix>" in [project], or BUNDLER_CACHE'
    )


@needs_node
def test_the_server_stopped_mid_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    port = _free_port()
    proc = _moto(port)
    try:
        _aws(monkeypatch, f"http://127.0.0.1:{port}")
        boto3.client("s3").create_bucket(Bucket=BUCKET)

        def stop_on_converting(line: str) -> None:
            if line.startswith("converting") and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)

        config = manifest.load(checkout(tmp_path / "a") / "bundle.toml")
        result = build.build(config, stop_on_converting)
    finally:
        proc.terminate()
    assert result.converted == ["starter"] and result.written
    assert [w for w in result.report.warnings if w.startswith("the shared cache ")]


@needs_node
def test_two_builds_at_once_share_one_entry(aws: str, tmp_path: Path) -> None:
    import boto3

    roots = [checkout(tmp_path / name) for name in ("a", "b")]
    _build_at_once(roots, "--json")
    assert tree(roots[0] / "dist") == tree(roots[1] / "dist")
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert len([k for k in keys if "/entries/" in k]) == 1
    third = build.build(manifest.load(checkout(tmp_path / "c") / "bundle.toml"))
    assert third.converted == []


@needs_node
def test_a_cold_build_asks_after_each_blob_once(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry is published when converted and again after verification: the second time
    only its changed files are asked after and uploaded."""
    from collections import Counter

    from bundler.models import remote

    asked: Counter[str] = Counter()
    made = remote.RemoteCache._s3

    def counting(self: remote.RemoteCache) -> object:
        client = made(self)
        if not getattr(client, "_counting", False):
            client._counting = True
            client.meta.events.register(
                "before-call.s3.HeadObject", lambda params, **_: asked.update([params["url_path"]])
            )
        return client

    monkeypatch.setattr(remote.RemoteCache, "_s3", counting)
    result = build.build(manifest.load(checkout(tmp_path / "a") / "bundle.toml"))
    assert result.converted == ["starter"]
    assert asked, "the build published to the store"
    assert [key for key, n in asked.items() if n > 1] == []


@needs_node
def test_manifests_sharing_a_model_convert_it_once(aws: str, tmp_path: Path) -> None:
    """A CI matrix: one job per app's manifest, one bucket. Another app that ships the same
    model file with the same options (under its own name) converts and verifies nothing."""
    first = build.build(manifest.load(checkout(tmp_path / "camera") / "bundle.toml"))
    assert first.converted == ["starter"]
    root = checkout(tmp_path / "search")
    text = (root / "bundle.toml").read_text()
    text = text.replace('name = "team-app"', 'name = "search-app"', 1)
    text = text.replace('name = "starter"', 'name = "digits"', 1)
    (root / "bundle.toml").write_text(text)
    said: list[str] = []
    other = build.build(manifest.load(root / "bundle.toml"), said.append)
    assert other.converted == [] and other.reused == other.fetched == ["digits"]
    assert not [line for line in said if line.startswith(("verifying", "running the source"))]
    assert other.report.models[0].name == "digits"


def test_an_index_naming_a_path_out_of_its_folder_is_damaged(aws: str, tmp_path: Path) -> None:
    import hashlib
    import json

    import boto3

    from bundler.models import cache, remote

    s3 = boto3.client("s3")
    data = b"not yours"
    digest = hashlib.sha256(data).hexdigest()
    s3.put_object(Bucket=BUCKET, Key=f"bundler/blobs/{digest}", Body=data)
    for i, name in enumerate(("../../escaped", "..", "sub/escaped")):
        index = json.dumps({"format": 1, "files": {name: digest}}).encode()
        s3.put_object(Bucket=BUCKET, Key="bundler/derived/runtimes/k1", Body=index)
        store = cache.Cache(tmp_path / f"cache{i}", remote.RemoteCache(URL))
        assert store.derived("runtimes", "k1", ["runtime.js"], lambda: {"runtime.js": b"made"}) == {
            "runtime.js": b"made"
        }
        store.finish()
        assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() == data]


@needs_node
def test_a_malformed_endpoint_is_said_like_an_unreachable_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _aws(monkeypatch, "minio:9000")  # no scheme: boto3 refuses it
    result = build.build(manifest.load(checkout(tmp_path / "a") / "bundle.toml"))
    assert result.converted == ["starter"] and result.written
    said = [w for w in result.report.warnings if "shared cache" in w]
    assert len(said) == 1 and said[0].startswith(f"the shared cache {URL} could not be read (")


@needs_node
def test_a_store_that_refuses_writes_is_still_read(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read-only credentials (a pull request's CI job): what the store has is used, what this
    build makes stays here, said once, even with --require-cache."""
    from bundler.models import remote

    build.build(manifest.load(checkout(tmp_path / "a") / "bundle.toml"))

    def refused(self: remote.RemoteCache, key: str, data: bytes) -> None:
        raise remote.Unavailable("An error occurred (AccessDenied) when calling PutObject", True)

    monkeypatch.setattr(remote.RemoteCache, "_put", refused)
    root = checkout(tmp_path / "b")
    with (root / "bundle.toml").open("a") as f:
        f.write(
            '\n[[models]]\nname = "small"\nsource = "models/starter/model.json"\n'
            'format = "layers"\nquantize = "uint8"\n'
        )
    config = manifest.requiring_cache(manifest.load(root / "bundle.toml"))
    result = build.build(config)
    assert result.converted == ["small"] and result.reused == result.fetched == ["starter"]
    said = [w for w in result.report.warnings if "shared cache" in w]
    assert said == [
        f"the shared cache {URL} could not be written (An error occurred (AccessDenied) when "
        f"calling PutObject); what this build made is kept in {root / '.bundler-cache'} only"
    ]


@needs_node
def test_two_builds_at_once_on_one_cache_folder(tmp_path: Path) -> None:
    """Two jobs on one runner (or `bundler watch` and a build) sharing one local cache."""
    roots = [checkout(tmp_path / name) for name in ("a", "b")]
    for root in roots:
        text = (root / "bundle.toml").read_text()
        text = text.replace(f'cache_dir = "{URL}"', f'cache_dir = "{tmp_path / "cache"}"')
        (root / "bundle.toml").write_text(text)
    for _ in range(2):  # cold, then both reusing what they made
        for err in _build_at_once(roots):
            assert b"damaged" not in err, err.decode()
        assert tree(roots[0] / "dist") == tree(roots[1] / "dist")
    leftovers = [p.name for p in (tmp_path / "cache").rglob(".*")]
    assert leftovers == []


@needs_node
def test_the_table_says_which_models_came_from_the_store(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bundler.cli import main

    build.build(manifest.load(checkout(tmp_path / "a") / "bundle.toml"))
    monkeypatch.chdir(checkout(tmp_path / "b"))
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["build", "bundle.toml"]) == 0
    captured = capsys.readouterr()
    rows = [line.split() for line in captured.out.splitlines() if line.startswith("starter")]
    assert rows and rows[0][-1] == "shared"
    assert "fetched starter from the shared cache" in captured.err
    monkeypatch.chdir(tmp_path / "a")
    assert main(["build", "bundle.toml"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "starter" in line]
    assert rows and rows[0][0] == "starter" and rows[0][-1] == "cached"


def test_publishing_goes_on_in_the_background_in_order(aws: str, tmp_path: Path) -> None:
    """An entry published twice (converted, then verified) lands in the order asked, and
    `finish` waits for both."""
    import json

    import boto3

    from bundler.models import cache, remote

    store = cache.Cache(tmp_path / "cache", remote.RemoteCache(URL))
    for version in range(5):
        store.derived("runtimes", f"k{version}", ["a"], lambda v=version: {"a": b"%d" % v})
    for attempt in range(3):
        store._publish("derived/runtimes/k0", {"a": b"attempt %d" % attempt})
    store.finish()
    s3 = boto3.client("s3")
    index = json.loads(
        s3.get_object(Bucket=BUCKET, Key="bundler/derived/runtimes/k0")["Body"].read()
    )
    digest = index["files"]["a"]
    blob = s3.get_object(Bucket=BUCKET, Key=f"bundler/blobs/{digest}")["Body"].read()
    assert blob == b"attempt 2"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert len([k for k in keys if "/derived/runtimes/" in k]) == 5
    assert store.warnings == []
