"""The web target's files and `bundler serve`'s HTTP side, without a browser.

The server tests run a DevServer over a small folder made by hand; the build tests build the
starter model (no TensorFlow). tests/test_web_browser.py drives the result in Chromium.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import brotli
import pytest

from bundler import build, cli, manifest, starter
from bundler.dev import serve
from bundler.runtimes import ensure_tfjs
from bundler.targets.web import target as web

needs_node = pytest.mark.needs_node

HASHED = "models/m/0123abcd"


# --- a DevServer over a hand-made folder ---------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def decoded(self) -> bytes:
        coding = self.headers.get("content-encoding")
        if coding == "br":
            return bytes(brotli.decompress(self.body))
        if coding == "gzip":
            return gzip.decompress(self.body)
        assert coding is None, coding
        return self.body


def _site(root: Path) -> dict[str, bytes]:
    files = {
        "index.html": b"<!doctype html><html><head><title>t</title></head><body>hi</body></html>",
        "bundler/loader.js": b"export const x = 1;\n" * 50,
        f"{HASHED}/model.json": json.dumps({"format": "layers-model", "pad": "x" * 500}).encode(),
        f"{HASHED}/group1-shard1of1.bin": bytes(range(256)) * 8,
        "sub/index.html": b"<html><head></head><body>sub</body></html>",
        "plain.txt": b"no compressed copies here\n",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if rel != "plain.txt":
            (root / f"{rel}.br").write_bytes(brotli.compress(data))
            (root / f"{rel}.gz").write_bytes(gzip.compress(data, mtime=0))
    return files


@pytest.fixture
def server(tmp_path: Path) -> Iterator[serve.DevServer]:
    dev = serve.DevServer(port=0)
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


def _get(dev: serve.DevServer, path: str, method: str = "GET", **headers: str) -> Reply:
    host, port = dev.httpd.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=10)
    try:
        conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


def test_sends_brotli_then_gzip_then_identity_by_accept_encoding(
    server: serve.DevServer, tmp_path: Path
) -> None:
    files = _site(tmp_path)
    server.set_root(tmp_path)
    path = f"/{HASHED}/group1-shard1of1.bin"
    cases = {
        "gzip, deflate, br, zstd": "br",
        "gzip": "gzip",
        "br;q=0, gzip;q=0.5": "gzip",
        "*": "br",
        "identity": None,
        "": None,
        "br;q=0, gzip;q=0": None,
    }
    for accept, coding in cases.items():
        reply = _get(server, path, Accept_Encoding=accept)
        assert reply.status == 200, accept
        assert reply.headers.get("content-encoding") == coding, accept
        assert reply.headers["vary"] == "Accept-Encoding"
        assert int(reply.headers["content-length"]) == len(reply.body)
        assert reply.decoded() == files[f"{HASHED}/group1-shard1of1.bin"], accept
    # A file without compressed copies is sent as it is, with no Vary.
    reply = _get(server, "/plain.txt", Accept_Encoding="br")
    assert "content-encoding" not in reply.headers and "vary" not in reply.headers


def test_content_types_and_cache_control(server: serve.DevServer, tmp_path: Path) -> None:
    _site(tmp_path)
    server.set_root(tmp_path)
    want = {
        "/": ("text/html; charset=utf-8", "no-cache"),
        "/bundler/loader.js": ("text/javascript; charset=utf-8", "no-cache"),
        f"/{HASHED}/model.json": ("application/json", serve.IMMUTABLE),
        f"/{HASHED}/group1-shard1of1.bin": ("application/octet-stream", serve.IMMUTABLE),
        "/plain.txt": ("text/plain; charset=utf-8", "no-cache"),
    }
    for path, (content_type, cache) in want.items():
        reply = _get(server, path, Accept_Encoding="br")
        assert (reply.headers["content-type"], reply.headers["cache-control"]) == (
            content_type,
            cache,
        ), path
    assert serve.IMMUTABLE == "public, max-age=31536000, immutable"


def test_etag_gives_304_for_files_and_pages(server: serve.DevServer, tmp_path: Path) -> None:
    _site(tmp_path)
    server.set_root(tmp_path)
    for path in ("/bundler/loader.js", "/"):
        first = _get(server, path, Accept_Encoding="br")
        again = _get(server, path, Accept_Encoding="br", If_None_Match=first.headers["etag"])
        assert again.status == 304 and again.body == b"", path
        # Another encoding is another representation: no match.
        other = _get(server, path, Accept_Encoding="gzip", If_None_Match=first.headers["etag"])
        assert other.status == 200 and other.headers["content-encoding"] == "gzip", path


def test_pages_get_the_live_reload_script(server: serve.DevServer, tmp_path: Path) -> None:
    files = _site(tmp_path)
    server.set_root(tmp_path)
    page = _get(server, "/", Accept_Encoding="br").decoded()
    assert serve.EVENTS_PATH.encode() in page
    assert page.index(b"bundler serve: live reload") < page.index(b"</head>")
    assert page.replace(serve.live_reload_script(), b"") == files["index.html"]
    # Only what is served changes: the file on disk, the one a production host sends, not.
    assert serve.EVENTS_PATH.encode() not in (tmp_path / "index.html").read_bytes()


def test_folders_head_and_paths_outside_the_root(server: serve.DevServer, tmp_path: Path) -> None:
    _site(tmp_path / "site")
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "site" / "link.txt").symlink_to(tmp_path / "secret.txt")
    server.set_root(tmp_path / "site")
    redirect = _get(server, "/sub")
    assert (redirect.status, redirect.headers["location"]) == (301, "/sub/")
    assert b"sub" in _get(server, "/sub/").body
    head = _get(server, "/bundler/loader.js", method="HEAD", Accept_Encoding="gzip")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) > 0
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/link.txt", "/missing.js"):
        assert _get(server, path).status == 404, path


def test_without_a_bundle_it_answers_503_and_reloads_later(server: serve.DevServer) -> None:
    server.set_root(None, 'project.targets has no "web"')
    reply = _get(server, "/")
    assert reply.status == 503
    assert b'bundler serve: project.targets has no "web".' in reply.body
    assert serve.EVENTS_PATH.encode() in reply.body


def test_events_stream_sends_reload_and_closes_on_stop(tmp_path: Path) -> None:
    dev = serve.DevServer(port=0)
    dev.start()
    host, port = dev.httpd.server_address[:2]
    sock = socket.create_connection((str(host), port), timeout=10)
    try:
        sock.sendall(f"GET {serve.EVENTS_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = _read_until(sock, b"retry: 1000\n\n")
        assert b"text/event-stream" in received
        dev.publish("reload")
        dev.publish("failed", {"message": "bad model"})
        received = _read_until(sock, b'"bad model"}\n\n')
        assert b"event: reload\ndata: {}\n\n" in received
        assert b'event: failed\ndata: {"message": "bad model"}\n\n' in received
        started = time.monotonic()
        dev.stop()
        assert sock.recv(100) == b""  # the stream ends: the server closed it
        assert time.monotonic() - started < 3
    finally:
        sock.close()
    # The port is free again.
    socket.create_server((str(host), port)).close()


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    deadline = time.monotonic() + 10
    while marker not in data:
        assert time.monotonic() < deadline, data
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def test_accepted_encodings() -> None:
    parse = serve._accepted_encodings
    assert parse("gzip, deflate, br, zstd") == {"gzip", "deflate", "br", "zstd"}
    assert parse("br;q=0, gzip") == {"gzip"}
    assert parse("*;q=0.1") == {"*", "br", "gzip"}
    assert parse("*, br;q=0") == {"*", "gzip"}
    assert parse("x-gzip") == {"x-gzip", "gzip"}
    assert parse("") == set()


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(serve.BundlerError, match=f"port {port} on 127.0.0.1 is in use"):
            serve.DevServer(port=port)


def test_is_immutable() -> None:
    assert web.is_immutable("models/digits/3f9a1c2e/model.json")
    assert web.is_immutable("/app/web/models/digits/3f9a1c2e/group1-shard1of2.bin")
    assert web.is_immutable("vendor/tfjs-4.22.0/300dfae2/tf.min.js")
    assert not web.is_immutable("index.html")
    assert not web.is_immutable("bundler/loader.js")
    assert not web.is_immutable("models/digits/model.json")


# --- the built site ------------------------------------------------------------------------


def _project(root: Path, extra: str = "", targets: str = '["web"]') -> Path:
    starter.write(root)
    path = root / "bundle.toml"
    text = path.read_text().replace('targets = ["wechat", "web"]', f"targets = {targets}")
    path.write_text(text.replace("[web]\n", f"[web]\n{extra}"))
    return path


@needs_node
def test_web_target_writes_the_site_with_compressed_copies(tmp_path: Path) -> None:
    config = manifest.load(_project(tmp_path))
    result = build.build(config)
    out = config.project.out
    site = out / "web"
    files = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    plain = {f for f in files if not f.endswith((".br", ".gz"))}
    [model] = result.report.to_json()["models"]
    folder = f"models/starter/{model['hash']}"
    tfjs = result.report.to_json()["web"]["tfjs"]
    assert re.fullmatch(r"vendor/tfjs-4\.22\.0/[0-9a-f]{8}/tf\.min\.js", tfjs)
    assert plain == {
        "index.html",
        "bundler/loader.js",
        "bundler/models.js",
        tfjs,
        f"{folder}/model.json",
        f"{folder}/group1-shard1of1.bin",
    }
    assert files == plain | {f + ".br" for f in plain} | {f + ".gz" for f in plain}
    for rel in plain:
        data = (site / rel).read_bytes()
        assert brotli.decompress((site / f"{rel}.br").read_bytes()) == data, rel
        assert gzip.decompress((site / f"{rel}.gz").read_bytes()) == data, rel
    # The model files are the build's; tf.min.js is the runtime built for them, smaller than
    # the npm package's whole tf.min.js.
    for name in ("model.json", "group1-shard1of1.bin"):
        assert (site / folder / name).read_bytes() == (out / folder / name).read_bytes()
    npm = ensure_tfjs("4.22.0") / "node_modules/@tensorflow/tfjs/dist/tf.min.js"
    runtime = (site / tfjs).read_bytes()
    assert runtime.startswith(b"/* TensorFlow.js 4.22.0 (Apache-2.0")
    assert len(runtime) < 0.6 * len(npm.read_bytes())
    assert result.report.to_json()["web"]["first_visit_brotli_bytes"] > 100_000

    data = _models_js(site)
    assert data["models"]["starter"]["hash"] == model["hash"]
    assert data["models"]["starter"]["path"] == folder
    assert data["settings"]["cache"] == "indexeddb"
    assert data["models"]["starter"]["inputs"] == [
        {"dtype": "float32", "name": "dense", "shape": [1, 4]}
    ]
    _assert_relative_urls(site)


@needs_node
def test_the_site_is_deterministic_and_a_second_build_writes_nothing(tmp_path: Path) -> None:
    config = manifest.load(_project(tmp_path / "a"))
    first = build.build(config)
    assert first.written
    again = build.build(config)
    assert not again.written
    other = manifest.load(_project(tmp_path / "b"))
    build.build(other)
    a, b = config.project.out / "web", other.project.out / "web"
    for path in a.rglob("*"):
        if path.is_file() and path.name not in ("index.html", "index.html.br", "index.html.gz"):
            assert (b / path.relative_to(a)).read_bytes() == path.read_bytes(), path
    # The page differs by the project's name only.
    assert (a / "index.html").read_text().replace("<h1>a</h1>", "<h1>b</h1>").replace(
        '"title": "a"', '"title": "b"'
    ).replace("<title>a ", "<title>b ") == (b / "index.html").read_text()


@needs_node
def test_tfjs_url_replaces_the_local_copy_and_cache_can_be_off(tmp_path: Path) -> None:
    url = "https://cdn.example.com/npm/@tensorflow/tfjs@4.22.0/dist/tf.min.js"
    config = manifest.load(_project(tmp_path, extra=f'tfjs_url = "{url}"\ncache = "none"\n'))
    result = build.build(config)
    site = config.project.out / "web"
    assert not (site / "vendor").exists()
    assert result.report.to_json()["web"]["tfjs"] == url
    assert f'<script src="{url}"></script>' in (site / "index.html").read_text()
    assert _models_js(site)["settings"]["cache"] == "none"


@needs_node
def test_without_the_web_target_nothing_is_written_for_it(tmp_path: Path) -> None:
    config = manifest.load(_project(tmp_path, targets='["wechat"]'))
    result = build.build(config)
    assert not (config.project.out / "web").exists()
    assert "web" not in result.report.to_json()


def _models_js(site: Path) -> dict[str, object]:
    text = (site / "bundler/models.js").read_text()
    found = dict(re.findall(r"export const (\w+) = (.*);\n", text))
    return {k: json.loads(v) for k, v in found.items()}


def _assert_relative_urls(site: Path) -> None:
    """No URL in the page or the loader starts at the host's root or names a host."""
    page = (site / "index.html").read_text()
    for url in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert not url.startswith(("/", "http:", "https:")), url
    for text in (page, (site / "bundler/loader.js").read_text()):
        for spec in re.findall(r"""import [^;]*? from ['"]([^'"]+)['"]""", text):
            assert spec.startswith("./"), spec
        assert "fetch('/" not in text and 'fetch("/' not in text


# --- the command ---------------------------------------------------------------------------


def test_serve_rejects_a_bad_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest_path = _project(tmp_path)
    assert cli.main(["serve", str(manifest_path), "--port", "70000"]) == cli.EXIT_USAGE
    assert "--port 70000 is not a port number" in capsys.readouterr().err


def test_serve_on_a_port_in_use_fails_with_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest_path = _project(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["serve", str(manifest_path), "--port", str(port)]) == cli.EXIT_FAILED
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


@pytest.mark.slow
@needs_node
def test_serve_builds_serves_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    manifest_path = _project(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bundler", "serve", str(manifest_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As a terminal would: SIGINT at its default, whatever the test runner's parent set.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"serving (http://127\.0\.0\.1:(\d+)/)", line)
        assert match, line
        port = int(match.group(2))
        deadline = time.monotonic() + 120
        while True:  # the first build ends with the watched paths
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "no build reported"
            if line.startswith("watching "):
                break
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/", headers={"Accept-Encoding": "br"})
        response = conn.getresponse()
        page = brotli.decompress(response.read())
        conn.close()
        assert response.status == 200 and b"bundler/loader.js" in page
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert err.rstrip().endswith("stopped")
    socket.create_server(("127.0.0.1", port)).close()  # the port is free
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".dist.")]
    assert leftovers == []


def test_serve_needs_the_web_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest_path = _project(tmp_path, targets='["wechat"]')
    assert cli.main(["serve", str(manifest_path), "--port", "0"]) == cli.EXIT_FAILED
    assert 'project.targets has no "web"' in capsys.readouterr().err


@needs_node
def test_serve_follows_the_builds_and_tells_the_pages(tmp_path: Path) -> None:
    """A failed first build answers 503 with the reason; the fix is served and reloads the
    page; a later failure is sent to the page and the last good bundle stays served."""
    import queue
    import threading

    from bundler.dev import watch

    manifest_path = _project(tmp_path)
    model_json = tmp_path / "models/starter/model.json"
    good = model_json.read_bytes()
    model_json.write_text("{ not json")
    events: queue.Queue[watch.Event] = queue.Queue()
    ready: queue.Queue[serve.DevServer] = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(
        target=serve.serve,
        args=(manifest_path,),
        kwargs={
            "port": 0,
            "on_event": events.put,
            "stop": stop,
            "on_ready": ready.put,
            "debounce": 0.1,
            "templates": tmp_path / "no-templates",
        },
        daemon=True,
    )
    thread.start()

    def outcome() -> watch.Event:
        while True:
            event = events.get(timeout=120)
            if isinstance(event, watch.Built | watch.Failed):
                return event

    try:
        dev = ready.get(timeout=30)
        assert isinstance(outcome(), watch.Failed)
        reply = _get(dev, "/")
        assert reply.status == 503 and b"the build failed" in reply.body
        seen = dev.event_count

        model_json.write_bytes(good)
        built = outcome()
        assert isinstance(built, watch.Built) and built.result.written
        assert _get(dev, "/").status == 200
        got = dev.events_after(seen, 5)
        assert got is not None and [name for name, _ in got[1]] == ["reload"]
        seen = got[0]

        model_json.write_text("{ broken again")
        assert isinstance(outcome(), watch.Failed)
        assert _get(dev, "/").status == 200  # the last good bundle
        got = dev.events_after(seen, 5)
        assert got is not None and [name for name, _ in got[1]] == ["failed"]
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()
