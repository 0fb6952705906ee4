"""The web bundle in a real browser: Debian's Chromium, headless, driven by Playwright, against
`bundler serve` running in this process on 127.0.0.1.

The site holds two models: the starter (a tfjs LayersModel, kept as `layers`) and a small
tf_keras MLP from an .h5 file (converted to `graph`). The tests check what a visitor gets:
the first visit downloads brotli files and predicts what the source models predict; a reload
reads IndexedDB and downloads no model file; a rebuild with a new hash reloads the page by
itself, and the old version leaves IndexedDB; without IndexedDB, or with it full, the models
still load. The demo page's screenshot and the bytes of each visit are written to
tests/browser/artifacts/ (not committed).

`make test` installs Chromium (`apt-get install chromium`); no browser is downloaded.
"""

from __future__ import annotations

import functools
import http.server
import json
import queue
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import needs_node
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright

from bundler import starter
from bundler.dev import serve, watch
from bundler.models import weights

pytestmark = [pytest.mark.slow, needs_node]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "browser" / "artifacts"
BUILD_TIMEOUT = 300.0  # the first build converts with TensorFlow
PAGE_TIMEOUT_MS = 60_000
# float32 through the browser's backend (WebGL on SwiftShader, or the CPU) against TensorFlow.
TOLERANCE = 1e-4
MODELS = ("starter", "mlp")


@dataclass
class Site:
    """A project served by `bundler serve` on a thread of this process."""

    root: Path
    server: serve.DevServer
    events: queue.Queue[watch.Event]
    stop: threading.Event
    thread: threading.Thread
    mlp: Any  # the tf_keras model the mlp was converted from
    crash: list[BaseException] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def next_build(self, timeout: float = BUILD_TIMEOUT) -> watch.Built:
        deadline = time.monotonic() + timeout
        while True:
            assert not self.crash, self.crash
            try:
                event = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no build within {timeout:.0f} s")
            if isinstance(event, watch.Failed):
                pytest.fail(f"the build failed: {event.error}")
            if isinstance(event, watch.Built):
                return event

    def hashes(self, built: watch.Built) -> dict[str, str]:
        return {m["name"]: m["hash"] for m in built.result.report.to_json()["models"]}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    import tf_keras

    root = tmp_path_factory.mktemp("web-site")
    starter.write(root)
    rng = np.random.default_rng(7)
    inp = tf_keras.Input((8,), name="features")
    hidden = tf_keras.layers.Dense(16, activation="relu", name="hidden")(inp)
    out = tf_keras.layers.Dense(4, activation="softmax", name="probs")(hidden)
    mlp = tf_keras.Model(inp, out)
    mlp.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in mlp.weights])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "HDF5 is legacy": the .h5 input is what is tested
        mlp.save(root / "models" / "mlp.h5")
    (root / "bundle.toml").write_text(
        '[project]\nname = "web-test"\ntargets = ["web"]\n\n[web]\ntfjs_version = "4.22.0"\n\n'
        '[[models]]\nname = "starter"\nsource = "models/starter/model.json"\n'
        'format = "layers"\n\n'
        '[[models]]\nname = "mlp"\nsource = "models/mlp.h5"\nformat = "graph"\n'
    )
    events: queue.Queue[watch.Event] = queue.Queue()
    stop = threading.Event()
    ready: queue.Queue[serve.DevServer] = queue.Queue()
    crash: list[BaseException] = []
    templates = tmp_path_factory.mktemp("no-templates")  # others may edit the real ones

    def run() -> None:
        try:
            serve.serve(
                root / "bundle.toml",
                port=0,
                on_event=events.put,
                stop=stop,
                on_ready=ready.put,
                debounce=0.2,
                templates=templates,
            )
        except BaseException as err:
            crash.append(err)
            ready.put(None)  # type: ignore[arg-type]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    server = ready.get(timeout=30)
    assert server is not None, crash
    built = Site(root, server, events, stop, thread, mlp, crash)
    built.next_build()
    try:
        yield built
    finally:
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "bundler serve did not stop"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: `make test` installs it (apt chromium)"
    with sync_playwright() as p:
        yield p


def _browser(playwright: Playwright, profile: Path) -> BrowserContext:
    """A fresh Chromium profile: nothing cached, an empty IndexedDB."""
    return playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 900, "height": 640},
    )


class Visit:
    """A page, with what it asked the network for and what went wrong in it."""

    def __init__(self, context: BrowserContext) -> None:
        self.page: Page = context.pages[0] if context.pages else context.new_page()
        self.responses: list[Any] = []
        self.errors: list[str] = []
        self.page.on("response", lambda r: self.responses.append(r))
        self.page.on("pageerror", lambda err: self.errors.append(str(err)))
        self.page.on(
            "console",
            lambda m: self.errors.append(m.text) if m.type == "error" else None,
        )

    def open(self, url: str) -> dict[str, Any]:
        self.responses.clear()
        self.page.goto(url)
        return self.results()

    def reload(self) -> dict[str, Any]:
        self.responses.clear()
        self.page.reload()
        return self.results()

    def results(self) -> dict[str, Any]:
        self.page.wait_for_function(
            "document.documentElement.dataset.state === 'done'", timeout=PAGE_TIMEOUT_MS
        )
        results: dict[str, Any] = self.page.evaluate("window.bundlerDemo.results")
        for name, result in results.items():
            assert "error" not in result, f"{name}: {result['error']}"
        assert not self.errors, self.errors
        return results

    def model_responses(self) -> list[Any]:
        return [r for r in self.responses if "/models/" in r.url]

    def stored(self) -> set[str]:
        return set(self.page.evaluate("tf.io.listModels()"))


def _expected(site: Site, name: str, result: dict[str, Any]) -> np.ndarray[Any, Any]:
    """What the source model predicts for the input the page used."""
    [feed] = result["inputs"]
    x = np.asarray(feed["values"], dtype=np.float32).reshape(feed["shape"])
    if name == "mlp":
        return np.asarray(site.mlp(x, training=False)).reshape(-1)
    found = _starter_weights(site.root)
    logits = x @ found["dense/kernel"] + found["dense/bias"]
    e = np.exp(logits - logits.max())
    return (e / e.sum()).reshape(-1)


def _starter_weights(root: Path) -> dict[str, np.ndarray[Any, Any]]:
    path = root / "models/starter/model.json"
    doc = json.loads(path.read_text())
    [group] = weights.read_groups(path, doc["weightsManifest"])
    return {w.name: w.array for w in group}


def _check_predictions(site: Site, results: dict[str, Any]) -> None:
    assert set(results) == set(MODELS)
    for name in MODELS:
        got = np.asarray(results[name]["output"], dtype=np.float32)
        want = _expected(site, name, results[name])
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() < TOLERANCE, (name, got, want)


def _transfers(site: Site, since: int) -> dict[str, Any]:
    sent = site.server.transfers[since:]
    return {
        "requests": len(sent),
        "body_bytes": sum(t.body_bytes for t in sent),
        "model_body_bytes": sum(t.body_bytes for t in sent if "/models/" in t.path),
        "by_path": {f"{t.path} {t.status} {t.encoding or 'identity'}": t.body_bytes for t in sent},
    }


def test_first_visit_downloads_brotli_and_a_reload_reads_indexeddb(
    site: Site, playwright: Playwright, tmp_path: Path
) -> None:
    context = _browser(playwright, tmp_path / "profile")
    try:
        visit = Visit(context)
        web_root = site.root / "dist" / "web"

        mark = len(site.server.transfers)
        first = visit.open(site.url)
        first_bytes = _transfers(site, mark)
        for name in MODELS:
            assert (first[name]["source"], first[name]["saved"]) == ("network", True), name
            # Progress by bytes: from 0, never backwards, through the files, to 1.
            progress = first[name]["progress"]
            assert progress[0] == 0 and progress[-1] == 1, progress
            assert progress == sorted(progress), progress
            assert any(0 < f < 1 for f in progress), progress
        _check_predictions(site, first)
        # Every model file came over the network as brotli, and the browser decoded it to the
        # very bytes of the file.
        model_files = visit.model_responses()
        assert len(model_files) == 4  # two model.json, two shards
        for response in [*model_files, *(r for r in visit.responses if "tf.min.js" in r.url)]:
            assert response.status == 200, response.url
            assert response.headers.get("content-encoding") == "br", response.url
            rel = response.url.removeprefix(site.url)
            assert response.body() == (web_root / rel).read_bytes(), rel
        hashes = {name: first[name]["hash"] for name in MODELS}
        assert visit.stored() == {f"indexeddb://{n}@{h}" for n, h in hashes.items()}
        visit.page.screenshot(path=str(tmp_path / "first.png"), full_page=True)

        mark = len(site.server.transfers)
        second = visit.reload()
        second_bytes = _transfers(site, mark)
        for name in MODELS:
            assert second[name]["source"] == "indexeddb", name
            assert second[name]["output"] == first[name]["output"], name
        assert visit.model_responses() == []
        assert second_bytes["model_body_bytes"] == 0
        assert second_bytes["body_bytes"] < first_bytes["body_bytes"] / 100

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (tmp_path / "first.png").replace(ARTIFACTS / "web-demo-first-visit.png")
        visit.page.screenshot(path=str(ARTIFACTS / "web-demo.png"), full_page=True)
        report = {"first_visit": first_bytes, "second_visit": second_bytes}
        (ARTIFACTS / "web-bytes.json").write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"\nbytes sent (response bodies): first visit {first_bytes['body_bytes']:,} "
            f"in {first_bytes['requests']} responses, second visit "
            f"{second_bytes['body_bytes']:,} in {second_bytes['requests']} responses"
        )
    finally:
        context.close()


def test_the_site_works_from_a_subfolder_of_a_plain_static_server(
    site: Site, playwright: Playwright, tmp_path: Path
) -> None:
    """No server of ours, no compression, the site under /web/: relative URLs do it."""
    handler = functools.partial(_QuietHandler, directory=str(site.root / "dist"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    context = _browser(playwright, tmp_path / "profile")
    try:
        visit = Visit(context)
        url = f"http://127.0.0.1:{httpd.server_address[1]}/web/"
        first = visit.open(url)
        _check_predictions(site, first)
        assert all(first[n]["source"] == "network" for n in MODELS)
        assert all(r.url.startswith(f"{url}models/") for r in visit.model_responses())
        second = visit.reload()
        assert all(second[n]["source"] == "indexeddb" for n in MODELS)
    finally:
        context.close()
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_without_indexeddb_the_models_still_load(
    site: Site, playwright: Playwright, tmp_path: Path
) -> None:
    context = _browser(playwright, tmp_path / "profile")
    context.add_init_script(
        "Object.defineProperty(window, 'indexedDB', {value: undefined, configurable: true});"
    )
    try:
        visit = Visit(context)
        for results in (visit.open(site.url), visit.reload()):
            _check_predictions(site, results)
            for name in MODELS:
                assert (results[name]["source"], results[name]["saved"]) == ("network", False)
                assert "IndexedDB" in results[name]["cacheError"], results[name]["cacheError"]
    finally:
        context.close()


def test_with_indexeddb_full_the_models_still_load(
    site: Site, playwright: Playwright, tmp_path: Path
) -> None:
    context = _browser(playwright, tmp_path / "profile")
    try:
        visit = Visit(context)
        cdp = context.new_cdp_session(visit.page)
        origin = site.url.rstrip("/")
        # A real quota, far below what a model takes: Chrome aborts the IndexedDB commit.
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin, "quotaSize": 100})
        for results in (visit.open(site.url), visit.reload()):
            _check_predictions(site, results)
            for name in MODELS:
                assert (results[name]["source"], results[name]["saved"]) == ("network", False)
                assert "storage full" in results[name]["cacheError"], results[name]["cacheError"]
        assert visit.stored() == set()
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin})  # room again
        assert all(r["saved"] for r in visit.reload().values())
        assert all(r["source"] == "indexeddb" for r in visit.reload().values())
    finally:
        context.close()


def test_a_rebuild_reloads_the_page_with_the_new_model_and_drops_the_old(
    site: Site, playwright: Playwright, tmp_path: Path
) -> None:
    context = _browser(playwright, tmp_path / "profile")
    try:
        visit = Visit(context)
        before = visit.open(site.url)
        old = {n: before[n]["hash"] for n in MODELS}
        assert visit.stored() == {f"indexeddb://{n}@{h}" for n, h in old.items()}

        # New weights for the starter: a new content hash. The page reloads by itself.
        shard = site.root / "models/starter/group1-shard1of1.bin"
        found = _starter_weights(site.root)
        kernel = found["dense/kernel"][:, ::-1].copy()
        shard.write_bytes(kernel.tobytes() + found["dense/bias"].tobytes())
        visit.page.evaluate("document.documentElement.dataset.state = 'rebuilding'")
        visit.responses.clear()
        built = site.next_build()
        assert built.result.written
        new = site.hashes(built)
        assert new["starter"] != old["starter"] and new["mlp"] == old["mlp"]

        visit.page.wait_for_function(
            f"window.bundlerDemo && window.bundlerDemo.results.starter && "
            f"window.bundlerDemo.results.starter.hash === {json.dumps(new['starter'])}",
            timeout=PAGE_TIMEOUT_MS,
        )
        after = visit.results()
        assert (after["starter"]["source"], after["starter"]["saved"]) == ("network", True)
        assert after["mlp"]["source"] == "indexeddb"
        _check_predictions(site, after)
        assert after["starter"]["output"] != before["starter"]["output"]
        assert visit.stored() == {f"indexeddb://{n}@{h}" for n, h in new.items()}
        assert [r.url.split("/models/")[1] for r in visit.model_responses()] == [
            f"starter/{new['starter']}/model.json",
            f"starter/{new['starter']}/group1-shard1of1.bin",
        ]
    finally:
        context.close()
