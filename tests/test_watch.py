"""`bundler watch`: one rebuild per burst, recovery from failed builds, what is watched and
what is not, and real rebuilds of a small project.

The watcher runs on a thread with a short debounce; each test waits for the watcher's events
(generously: a loaded machine may take seconds to deliver one) rather than sleeping.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundler import starter
from bundler.build import Progress, Result
from bundler.dev import watch
from bundler.errors import BundlerError, ManifestError
from bundler.manifest import Config

DEBOUNCE = 0.15
TIMEOUT = 30.0  # for one build to be reported; far more than it takes
REPO = Path(__file__).resolve().parent.parent

# Node and npm are required, never skipped: without them nothing proves the bundle loads.
needs_node = pytest.mark.needs_node


class FakeBuilder:
    """Stands in for build.build: records each config, fails while `failure` is set."""

    def __init__(self) -> None:
        self.configs: list[Config] = []
        self.failure: Exception | None = None

    def __call__(self, config: Config, progress: Progress | None = None) -> Result:
        self.configs.append(config)
        if self.failure is not None:
            raise self.failure
        return Result(report={"models": [], "warnings": []}, written=True)


class Running:
    """A watcher on a thread of its own; its events land in a queue."""

    def __init__(
        self, manifest: Path, templates: Path, debounce: float = DEBOUNCE, **options: Any
    ) -> None:
        self.events: queue.Queue[watch.Event] = queue.Queue()
        self.stop = threading.Event()
        self.crash: BaseException | None = None

        def run() -> None:
            try:
                watch.watch(
                    manifest,
                    on_event=self.events.put,
                    stop=self.stop,
                    debounce=debounce,
                    templates=templates,
                    **options,
                )
            except BaseException as err:
                self.crash = err

        self.debounce = debounce
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def outcome(self) -> tuple[watch.Built | watch.Failed, list[watch.Event]]:
        """The next build's outcome, and every event up to it."""
        seen: list[watch.Event] = []
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no build within {TIMEOUT}s; saw {seen}") from None
            seen.append(event)
            if isinstance(event, watch.Built | watch.Failed):
                return event, seen

    def built(self) -> watch.Built:
        event, _ = self.outcome()
        assert isinstance(event, watch.Built), event
        return event

    def failed(self) -> watch.Failed:
        event, _ = self.outcome()
        assert isinstance(event, watch.Failed), event
        return event

    def assert_quiet(self) -> None:
        """No build starts within three debounce times."""
        try:
            event = self.events.get(timeout=3 * self.debounce)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected {event}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=TIMEOUT)
        assert not self.thread.is_alive(), "the watcher did not stop"
        if self.crash is not None:
            raise self.crash


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The `bundler init` project: bundle.toml and a tfjs layers model in models/starter/."""
    starter.write(tmp_path)
    return tmp_path


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A templates folder of the test's own, so edits to the repository's never show up."""
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "page.j2").write_text("<page>{{ name }}</page>\n")
    return folder


@pytest.fixture
def start(templates: Path) -> Iterator[Callable[..., Running]]:
    """Start a watcher; each is stopped at the end of the test."""
    started: list[Running] = []

    def start(manifest: Path, **options: Any) -> Running:
        running = Running(manifest, templates, **options)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def with_model(manifest: Path, name: str, source: str) -> None:
    append(manifest, f'\n[[models]]\nname = "{name}"\nsource = "{source}"\nformat = "layers"\n')


def folders(targets: tuple[watch.Target, ...]) -> set[Path]:
    return {t.path for t in targets if t.tree}


# --- the loop, with a fake builder ------------------------------------------------------------


def test_first_build_then_one_rebuild_per_burst(
    project: Path, templates: Path, start: Callable[..., Running]
) -> None:
    builder = FakeBuilder()
    # A longer debounce than elsewhere: the burst must fit in it even on a loaded machine.
    running = start(project / "bundle.toml", builder=builder, debounce=0.5)
    first, seen = running.outcome()
    assert isinstance(first, watch.Built) and first.changed == ()
    assert isinstance(seen[0], watch.Started)

    notes = project / "models/starter/notes.txt"
    for i in range(3):  # three files, some written twice, all within the debounce time
        append(project / "bundle.toml", f"# edit {i}\n")
        notes.write_text(f"note {i}\n")
        append(templates / "page.j2", f"<!-- {i} -->\n")
    rebuilt = running.built()

    assert set(rebuilt.changed) == {
        (project / "bundle.toml").resolve(),
        notes.resolve(),
        (templates / "page.j2").resolve(),
    }
    running.assert_quiet()
    assert len(builder.configs) == 2


def test_a_failed_build_is_followed_by_a_good_one(
    project: Path, start: Callable[..., Running]
) -> None:
    builder = FakeBuilder()
    manifest = project / "bundle.toml"
    good = manifest.read_text()
    running = start(manifest, builder=builder)
    running.built()

    builder.failure = BundlerError("the plan is 1.2 MB over budget")
    append(manifest, "# a\n")
    assert str(running.failed().error) == "the plan is 1.2 MB over budget"

    builder.failure = None
    manifest.write_text(good.replace('quantize = "none"', 'quantize = "uint9"'))
    error = running.failed().error
    assert isinstance(error, ManifestError)
    assert '"uint9" is not allowed' in str(error)

    manifest.write_text(good.replace('quantize = "none"', 'quantize = "uint8"'))
    recovered = running.built()
    assert recovered.config.models[0].quantize.label == "uint8"
    assert len(builder.configs) == 3  # the bad manifest never reached the builder


def test_a_bug_in_a_build_is_reported_and_the_watcher_goes_on(
    project: Path, start: Callable[..., Running]
) -> None:
    builder = FakeBuilder()
    builder.failure = KeyError("models")
    running = start(project / "bundle.toml", builder=builder)
    assert isinstance(running.failed().error, KeyError)
    builder.failure = None
    append(project / "bundle.toml", "# again\n")
    running.built()


def test_what_the_build_writes_and_editor_files_are_ignored(
    project: Path, start: Callable[..., Running]
) -> None:
    # The model at the project's root: its folder, watched whole, holds out and the cache.
    model_dir = project / "models/starter"
    for file in model_dir.iterdir():
        file.rename(project / file.name)
    manifest = project / "bundle.toml"
    manifest.write_text(manifest.read_text().replace("models/starter/model.json", "model.json"))
    builder = FakeBuilder()
    running = start(manifest, builder=builder)
    _, seen = running.outcome()
    assert project.resolve() in folders(watching(seen))

    for rel in (
        "dist/models/starter/model.json",
        ".bundler-cache/models/abc/entry.json",
        ".dist.new-k3j2/bundle-report.json",
        ".dist.old-k3j2/bundle-report.json",
        "bundle.toml.swp",
        ".#bundle.toml",
        "model.json~",
        "4913",
    ):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("x")
    running.assert_quiet()
    append(manifest, "# edit\n")
    assert running.built().changed == (manifest.resolve(),)
    assert len(builder.configs) == 2


def test_the_watched_set_follows_the_manifest(project: Path, start: Callable[..., Running]) -> None:
    manifest = project / "bundle.toml"
    original = manifest.read_text()
    shutil.copytree(project / "models/starter", project / "models/second")
    running = start(manifest, builder=FakeBuilder())
    _, seen = running.outcome()
    assert folders(watching(seen)) >= {(project / "models/starter").resolve()}
    assert (project / "models/second").resolve() not in folders(watching(seen))

    with_model(manifest, "second", "models/second/model.json")
    built, seen = running.outcome()
    assert isinstance(built, watch.Built)
    assert [m.name for m in built.config.models] == ["starter", "second"]
    assert (project / "models/second").resolve() in folders(watching(seen))

    (project / "models/second/notes.txt").write_text("retrained\n")
    assert running.built().changed == ((project / "models/second/notes.txt").resolve(),)

    manifest.write_text(original)
    _, seen = running.outcome()
    assert (project / "models/second").resolve() not in folders(watching(seen))
    (project / "models/second/notes.txt").write_text("not watched any more\n")
    append(manifest, "# edit\n")
    assert running.built().changed == (manifest.resolve(),)


def test_a_model_named_before_it_exists_builds_once_it_appears(
    project: Path, start: Callable[..., Running]
) -> None:
    manifest = project / "bundle.toml"
    with_model(manifest, "later", "models/later/model.json")
    running = start(manifest, builder=FakeBuilder())
    assert "models[1].source" in str(running.failed().error)

    staging = project / "staging"
    shutil.copytree(project / "models/starter", staging)
    staging.rename(project / "models/later")  # appears whole, as a training script would write it
    built = running.built()
    assert [m.name for m in built.config.models] == ["starter", "later"]


def test_a_missing_manifest_is_an_error_at_once(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file"):
        watch.watch(tmp_path / "bundle.toml", on_event=lambda event: None, stop=threading.Event())


def watching(events: list[watch.Event]) -> tuple[watch.Target, ...]:
    found = [e for e in events if isinstance(e, watch.Watching)]
    assert found, f"no Watching event in {events}"
    return found[-1].targets


# --- real builds ------------------------------------------------------------------------------


def bundle(project: Path) -> dict[str, bytes]:
    out = project / "dist"
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


@needs_node
@pytest.mark.slow
def test_editing_the_quantization_changes_the_bundle(
    project: Path, start: Callable[..., Running]
) -> None:
    manifest = project / "bundle.toml"
    running = start(manifest)
    first = running.built()
    assert first.result.converted == ["starter"]
    before = bundle(project)

    manifest.write_text(manifest.read_text().replace('quantize = "none"', 'quantize = "uint8"'))
    rebuilt = running.built()
    assert rebuilt.changed == (manifest.resolve(),)
    assert rebuilt.result.converted == ["starter"]
    assert rebuilt.result.report.to_json()["models"][0]["quantize"] == "uint8"
    after = bundle(project)
    assert after != before
    model_json = next(k for k in after if k.endswith("/model.json"))
    doc = json.loads(after[model_json])
    assert doc["weightsManifest"][0]["weights"][0]["quantization"]["dtype"] == "uint8"

    # A broken manifest keeps the bundle as it was; the next good save recovers.
    manifest.write_text(manifest.read_text().replace('format = "layers"', 'format = "layer"'))
    running.failed()
    assert bundle(project) == after
    manifest.write_text(manifest.read_text().replace('format = "layer"', 'format = "layers"'))
    recovered = running.built()
    assert recovered.result.reused == ["starter"] and not recovered.result.written
    assert not list(project.glob(".dist.*"))


@needs_node
@pytest.mark.slow
def test_a_model_written_in_two_chunks_rebuilds_once(
    project: Path, start: Callable[..., Running]
) -> None:
    shard = project / "models/starter/group1-shard1of1.bin"
    running = start(project / "bundle.toml", debounce=0.5)
    running.built()

    data = np.random.default_rng(1).normal(0, 0.5, size=15).astype("<f4").tobytes()
    assert len(data) == shard.stat().st_size
    with shard.open("wb") as f:
        f.write(data[:32])
        f.flush()
        os.fsync(f.fileno())
        time.sleep(0.1)  # less than the debounce: still one burst
        f.write(data[32:])
    rebuilt, seen = running.outcome()
    assert isinstance(rebuilt, watch.Built), rebuilt
    assert [type(e) for e in seen] == [watch.Started, watch.Built]
    assert rebuilt.changed == (shard.resolve(),)
    assert rebuilt.result.converted == ["starter"]
    assert rebuilt.result.report.to_json()["models"][0]["max_abs_error"]["4.22.0"] < 1e-5
    running.assert_quiet()


@needs_node
@pytest.mark.slow
def test_a_template_edit_rebuilds_without_converting(
    project: Path, templates: Path, start: Callable[..., Running]
) -> None:
    running = start(project / "bundle.toml")
    running.built()
    append(templates / "page.j2", "<footer/>\n")
    rebuilt = running.built()
    assert rebuilt.changed == ((templates / "page.j2").resolve(),)
    assert rebuilt.result.converted == []
    assert rebuilt.result.reused == ["starter"]
    running.assert_quiet()


@needs_node
@pytest.mark.slow
def test_ctrl_c_stops_cleanly(project: Path) -> None:
    """`bundler watch` in a process of its own: first build, a rebuild, then SIGINT."""
    manifest = project / "bundle.toml"
    process = subprocess.Popen(
        [sys.executable, "-m", "bundler", "watch", str(manifest)],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True
    ).start()

    def wait_for(text: str) -> list[str]:
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            if text in seen[-1]:
                return seen
        process.kill()
        raise AssertionError(f"no {text!r} in {seen}")

    try:
        first = wait_for("(Ctrl-C to stop)")
        assert any("wrote" in line for line in first)
        manifest.write_text(manifest.read_text().replace('quantize = "none"', "quantize = 1"))
        failed = wait_for("build failed, keeping the last good bundle:")
        assert "changed: bundle.toml" in "".join(failed)
        assert "models[0].quantize" in wait_for("quantize")[-1]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "stopped" in wait_for("stopped")[-1]
    assert not list(project.glob(".dist.*"))
