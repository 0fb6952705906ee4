"""`bundler serve`: build, watch, and serve `<out>/web/` on 127.0.0.1 with live reload.

The server sends what a production host with nginx's `brotli_static`/`gzip_static` sends:
the `.br` or `.gz` written beside each file, by the request's `Accept-Encoding`, with
`Content-Encoding` and `Vary: Accept-Encoding`; `Cache-Control: immutable` for files under a
content-hashed folder and `no-cache` (with an ETag, so a revalidation costs a 304) for the
rest. The one thing it adds: the HTML pages it sends get a small script that listens to
`/__bundler/events` (server-sent events) and reloads the page after each rebuild.

The watcher (bundler/dev/watch.py) runs in the calling thread; the HTTP server in threads of its
own. Each request looks the files up again, so a rebuild (an atomic swap of `out`) is seen at
once and a reader never gets half a bundle.
"""

from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import http.server
import json
import logging
import mimetypes
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import brotli

from bundler import manifest
from bundler.build import Progress
from bundler.dev import watch
from bundler.errors import BundlerError
from bundler.models.artifacts import BROTLI_SUFFIX
from bundler.render import TEMPLATES, render
from bundler.targets.web import target as web

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 8000
EVENTS_PATH = "/__bundler/events"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# Server-sent events: a comment this often finds clients gone, and keeps proxies from closing.
KEEPALIVE_SECONDS = 10.0
# How often a waiting events stream looks whether the server is stopping.
STOP_POLL_SECONDS = 0.25
# The page's own compression when the live-reload script makes it differ from the file.
LIVE_BROTLI_QUALITY = 5

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".css": "text/css; charset=utf-8",
    ".bin": "application/octet-stream",
    ".wasm": "application/wasm",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".br": "application/x-brotli",
    ".gz": "application/gzip",
}
# Content-Encoding by precompressed suffix, in order of preference.
ENCODINGS = (("br", BROTLI_SUFFIX), ("gzip", web.GZIP_SUFFIX))


@dataclass(frozen=True)
class Transfer:
    """One response: what was asked, what was sent, and the body's bytes on the wire."""

    path: str
    status: int
    encoding: str | None
    body_bytes: int


class DevServer:
    """A threaded HTTP server for one folder, with an event stream for live reload."""

    def __init__(self, host: str = HOST, port: int = DEFAULT_PORT) -> None:
        try:
            self.httpd = _HTTPServer((host, port), _Handler)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise BundlerError(
                    f"port {port} on {host} is in use: pass --port with another number "
                    "(--port 0 takes any free port)"
                ) from err
            raise BundlerError(f"cannot serve on {host}:{port}: {err}") from err
        self.httpd.dev = self
        self.root: Path | None = None
        self.unavailable = "the first build has not finished yet"
        self.transfers: list[Transfer] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._events: list[tuple[str, str]] = []  # (event name, JSON data), by number
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The address to open, ending in `/`."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> None:
        """Serve in a background thread until `stop()`."""
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": STOP_POLL_SECONDS},
            name="bundler-serve",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Close the event streams, stop serving and free the port."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()

    def set_root(self, root: Path | None, unavailable: str = "") -> None:
        """Serve `root` from now on; None answers 503 with the reason `unavailable`."""
        with self._lock:
            self.root = root
            self.unavailable = unavailable

    def serving(self) -> tuple[Path | None, str]:
        """The folder served now, or None and why not."""
        with self._lock:
            return self.root, self.unavailable

    def publish(self, event: str, data: dict[str, object] | None = None) -> None:
        """Send an event to every open page (`reload` reloads it)."""
        with self._changed:
            self._events.append((event, json.dumps(data or {})))
            self._changed.notify_all()

    def record(self, transfer: Transfer) -> None:
        """Keep what a response sent (tests and measurements read `transfers`)."""
        with self._lock:
            self.transfers.append(transfer)

    def events_after(self, seen: int, timeout: float) -> tuple[int, list[tuple[str, str]]] | None:
        """Events published after the first `seen` ones, waiting up to `timeout`; None when
        stopping."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._stopping or len(self._events) > seen, timeout=timeout
            )
            if self._stopping:
                return None
            return len(self._events), self._events[seen:]

    @property
    def event_count(self) -> int:
        with self._lock:
            return len(self._events)


def serve(
    manifest_path: Path | str,
    *,
    port: int = DEFAULT_PORT,
    host: str = HOST,
    on_event: Callable[[watch.Event], None],
    stop: threading.Event,
    on_ready: Callable[[DevServer], None] | None = None,
    progress: Progress | None = None,
    debounce: float = watch.DEBOUNCE_SECONDS,
    templates: Path = TEMPLATES,
) -> None:
    """Build, serve `<out>/web/`, rebuild on changes and reload open pages, until `stop`."""
    server: DevServer | None = None

    def handle(event: watch.Event) -> None:
        if server is not None:
            if isinstance(event, watch.Built):
                root, reason = _web_root(event.config)
                server.set_root(root, reason)
                if event.result.written:
                    server.publish("reload")
            elif isinstance(event, watch.Failed):
                if server.root is None:
                    server.set_root(None, f"the build failed: {event.error}")
                server.publish("failed", {"message": str(event.error)})
        on_event(event)

    watcher = watch.Watcher(
        manifest_path, on_event=handle, debounce=debounce, progress=progress, templates=templates
    )
    server = DevServer(host, port)
    try:
        config = manifest.load(watcher.manifest)
    except BundlerError:
        pass  # the first build reports it
    else:
        root, reason = _web_root(config)
        if root is None:
            server.stop()
            raise BundlerError(f"{manifest.display_path(watcher.manifest)}: {reason}")
        if (root / web.INDEX).is_file():
            server.set_root(root)  # the last bundle, until the first build replaces it
    server.start()
    try:
        if on_ready is not None:
            on_ready(server)
        watcher.run(stop)
    finally:
        server.stop()


def _web_root(config: manifest.Config) -> tuple[Path | None, str]:
    if "web" not in config.project.targets:
        return None, 'project.targets has no "web": add it to the manifest to build the site'
    return config.project.out / web.WEB_DIR, ""


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    dev: DevServer


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "bundler-serve"

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # Routing

    def _respond(self, head: bool) -> None:
        dev = self.server.dev
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if path == EVENTS_PATH and not head:
            self._events(dev)
            return
        root, unavailable = dev.serving()
        if root is None:
            page = render("dev/unavailable.html.j2", reason=unavailable).encode()
            self._send_bytes(503, page, "text/html; charset=utf-8", head, live=True)
            return
        file = _resolve(root, path)
        if file is None:
            self._send_bytes(404, b"not found\n", "text/plain; charset=utf-8", head)
            return
        if file.is_dir():
            if not path.endswith("/"):
                self._redirect(path + "/")
                return
            file = file / web.INDEX
            if not file.is_file():
                self._send_bytes(404, b"not found\n", "text/plain; charset=utf-8", head)
                return
        self._send_file(root, file, head)

    # Files

    def _send_file(self, root: Path, file: Path, head: bool) -> None:
        rel = file.relative_to(root).as_posix()
        content_type = _content_type(file)
        accepted = _accepted_encodings(self.headers.get("Accept-Encoding", ""))
        has_variants = not file.name.endswith(web.COMPRESSED_SUFFIXES) and any(
            file.with_name(file.name + suffix).is_file() for _, suffix in ENCODINGS
        )
        if content_type.startswith("text/html"):
            self._send_page(file, content_type, accepted, head)
            return
        encoding, chosen = None, file
        if has_variants:
            for name, suffix in ENCODINGS:
                variant = file.with_name(file.name + suffix)
                if name in accepted and variant.is_file():
                    encoding, chosen = name, variant
                    break
        try:
            stat = chosen.stat()
            data = b"" if head else chosen.read_bytes()
        except OSError:  # swapped away between the lookup and the read
            self._send_bytes(404, b"not found\n", "text/plain; charset=utf-8", head)
            return
        etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}-{encoding or "identity"}"'
        headers = {
            "Content-Type": content_type,
            "Cache-Control": IMMUTABLE if web.is_immutable(rel) else REVALIDATE,
            "ETag": etag,
        }
        if has_variants:
            headers["Vary"] = "Accept-Encoding"
        if encoding:
            headers["Content-Encoding"] = encoding
        if etag in _etags(self.headers.get("If-None-Match", "")):
            self._send(304, headers, b"", head=True, encoding=encoding)
            return
        headers["Content-Length"] = str(stat.st_size)
        self._send(200, headers, data, head, encoding=encoding)

    def _send_page(self, file: Path, content_type: str, accepted: set[str], head: bool) -> None:
        """An HTML page, with the live-reload script before `</head>`."""
        try:
            text = file.read_bytes()
        except OSError:
            self._send_bytes(404, b"not found\n", "text/plain; charset=utf-8", head)
            return
        self._send_bytes(200, _with_live_reload(text), content_type, head, accepted=accepted)

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str,
        head: bool,
        *,
        live: bool = False,
        accepted: set[str] | None = None,
    ) -> None:
        if live:
            body = _with_live_reload(body)
        headers = {"Content-Type": content_type, "Cache-Control": REVALIDATE}
        encoding = None
        if accepted is not None:
            headers["Vary"] = "Accept-Encoding"
            if "br" in accepted:
                encoding, body = "br", brotli.compress(body, quality=LIVE_BROTLI_QUALITY)
            elif "gzip" in accepted:
                encoding, body = "gzip", gzip.compress(body, 6, mtime=0)
        if encoding:
            headers["Content-Encoding"] = encoding
        if status == 200:
            etag = f'"{hashlib.sha256(body).hexdigest()[:16]}-{encoding or "identity"}"'
            headers["ETag"] = etag
            if etag in _etags(self.headers.get("If-None-Match", "")):
                self._send(304, headers, b"", head=True, encoding=encoding)
                return
        headers["Content-Length"] = str(len(body))
        self._send(status, headers, body, head, encoding=encoding)

    def _redirect(self, location: str) -> None:
        self._send(301, {"Location": location, "Content-Length": "0"}, b"", head=True)

    def _send(
        self,
        status: int,
        headers: dict[str, str],
        body: bytes,
        head: bool,
        *,
        encoding: str | None = None,
    ) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        sent = 0
        if not head:
            try:
                self.wfile.write(body)
                sent = len(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
        path = urllib.parse.urlsplit(self.path).path
        self.server.dev.record(Transfer(path, status, encoding, sent))

    # Live reload

    def _events(self, dev: DevServer) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        seen = dev.event_count
        try:
            self.wfile.write(b"retry: 1000\n\n")
            self.wfile.flush()
            waited = 0.0
            while True:
                got = dev.events_after(seen, STOP_POLL_SECONDS)
                if got is None:
                    return
                seen, events = got
                for name, data in events:
                    self.wfile.write(f"event: {name}\ndata: {data}\n\n".encode())
                waited = 0.0 if events else waited + STOP_POLL_SECONDS
                if waited >= KEEPALIVE_SECONDS:
                    self.wfile.write(b": keep-alive\n\n")
                    waited = 0.0
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ValueError):
            return  # the page went away (ValueError: the socket was closed under us)


def _resolve(root: Path, path: str) -> Path | None:
    """The file or folder a URL path names inside `root`; None if absent or outside it."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." or "\\" in p or "\0" in p for p in parts):
        return None
    target = root.joinpath(*parts)
    try:
        real_root = root.resolve(strict=True)
        real = target.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if real != real_root and not real.is_relative_to(real_root):
        return None
    return target


def _content_type(file: Path) -> str:
    suffix = file.suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(file.name)
    return guessed or "application/octet-stream"


_CODING = re.compile(r"^\s*([A-Za-z0-9*_-]+)\s*(?:;\s*q\s*=\s*([0-9.]+))?\s*$")


def _accepted_encodings(header: str) -> set[str]:
    """The codings of an Accept-Encoding header with a q-value above 0 (`*` stands for br and
    gzip unless they are named)."""
    named: dict[str, float] = {}
    for item in header.split(","):
        match = _CODING.match(item)
        if not match:
            continue
        try:
            q = float(match.group(2)) if match.group(2) is not None else 1.0
        except ValueError:
            continue
        named[match.group(1).lower()] = q
    accepted = {c for c, q in named.items() if q > 0}
    if named.get("*", 0) > 0:
        accepted |= {c for c in ("br", "gzip") if c not in named}
    if named.get("x-gzip", 0) > 0 and "gzip" not in named:
        accepted.add("gzip")
    return accepted


def _etags(header: str) -> set[str]:
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}


@functools.cache
def live_reload_script() -> bytes:
    """The script added to each HTML page served: reloads it on `reload`, warns on `failed`."""
    return render("dev/live_reload.html.j2", events_path=EVENTS_PATH).encode()


def _with_live_reload(page: bytes) -> bytes:
    at = page.lower().find(b"</head>")
    script = live_reload_script()
    return page[:at] + script + page[at:] if at >= 0 else page + script
