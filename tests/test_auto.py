"""quantize = "auto": the manifest's rules, the search on a model small enough to reason
about, and whole builds whose choice the shipping runtime confirms."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SourceModels, needs_node

from bundler import build, manifest, starter
from bundler.cli import main
from bundler.errors import ManifestError
from bundler.manifest import Constraints
from bundler.models import auto, weights
from bundler.models.weights import Weight

# --- the manifest ------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    starter.write(tmp_path)
    np.save(tmp_path / "s.npy", np.zeros((2, 2)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems(site: Path, lines: str, targets: str = '["web"]') -> tuple[str, ...]:
    (site / "bundle.toml").write_text(
        f'[project]\ntargets = {targets}\n\n[[models]]\nname = "starter"\n'
        f'source = "models/starter/model.json"\nformat = "layers"\n{lines}\n'
    )
    with pytest.raises(ManifestError) as info:
        manifest.load(site / "bundle.toml")
    return info.value.problems


def test_auto_needs_samples_and_a_constraint(site: Path) -> None:
    assert problems(site, 'quantize = "auto"\nmin_top1 = 0.99') == (
        "models[0].quantize: \"auto\" picks each weight's dtype on the model's samples: set "
        'samples = "<file>.npz" (real inputs, rows first)',
    )
    assert problems(site, 'quantize = "auto"\nsamples = "s.npy"') == (
        'models[0].quantize: "auto" needs a constraint to meet: min_top1 (top-1 agreement, '
        "such as 0.99), max_error (largest absolute error) or max_bytes (weight bytes)",
    )
    assert problems(site, 'min_top1 = 1.5\nmax_error = "small"\nmax_bytes = 0') == (
        "models[0].min_top1: 1.5 is not a share; expected more than 0, at most 1",
        'models[0].max_error: expected a number, got "small" (string)',
        "models[0].max_bytes: 0 must be greater than 0",
    )
    assert problems(
        site, 'quantize = "auto"\nsamples = "s.npy"\nmax_bytes = 1000', '["web", "tflite"]'
    ) == (
        'models[0].quantize: model "starter": its quantize picks a dtype per weight, and '
        'TFLite quantizes a whole model; with target "tflite", use "none", "float16", '
        '"uint16" or "uint8"',
    )
    text = (site / "bundle.toml").read_text().replace("max_bytes = 1000", "max_bytes = 900")
    (site / "bundle.toml").write_text(text.replace('["web", "tflite"]', '["web"]'))
    model = manifest.load(site / "bundle.toml").models[0]
    assert model.quantize.is_auto and not model.quantize.is_none
    assert model.constraints == Constraints(max_bytes=900)


# --- the search ------------------------------------------------------------------------------


def _problem() -> tuple[list[list[Weight]], Any, list[np.ndarray[Any, Any]]]:
    """Two weights summed into 4 outputs: `smooth` quantizes well; `spiky` has one outlier
    that stretches its range, so uint8 blurs the rest of its values."""
    rng = np.random.default_rng(5)
    smooth = rng.uniform(-1, 1, (64, 4)).astype(np.float32)
    spiky = rng.normal(0, 0.05, (64, 4)).astype(np.float32)
    spiky[0, 0] = 40.0
    x = rng.uniform(-1, 1, (200, 64)).astype(np.float32)
    x[:, 0] = 0  # the outlier's input is silent: only the blur matters

    def run(weights: Any) -> list[np.ndarray[Any, Any]]:
        return [x @ weights["smooth"] + x @ weights["spiky"]]

    groups = [[Weight("smooth", smooth), Weight("spiky", spiky)]]
    return groups, run, run({"smooth": smooth, "spiky": spiky})


def _error(groups: Any, run: Any, reference: Any, dtypes: dict[str, str]) -> float:
    """The max error of a table, judged as auto judges it."""
    constraints = Constraints(max_error=1e9)
    fixed = [[Weight(w.name, w.array) for w in groups[0]]]
    values = {}
    for w in fixed[0]:
        data, entry = weights.quantize(w.array, dtypes[w.name])
        values[w.name] = weights.dequantize(data, entry)
    assert constraints.any
    return float(np.max(np.abs(run(values)[0] - reference[0])))


def test_uint8_everywhere_when_it_meets_the_constraints() -> None:
    groups, run, reference = _problem()
    loose = _error(groups, run, reference, {"smooth": "uint8", "spiky": "uint8"}) * 1.01
    choice = auto.choose(groups, reference, run, Constraints(max_error=loose), lambda _: None)
    assert choice.dtypes == {"smooth": "uint8", "spiky": "uint8"}
    assert choice.met and choice.runs == 1 and choice.weight_bytes == 512


def test_the_coarse_weight_gets_sixteen_bits_first() -> None:
    groups, run, reference = _problem()
    all8 = _error(groups, run, reference, {"smooth": "uint8", "spiky": "uint8"})
    spiky16 = _error(groups, run, reference, {"smooth": "uint8", "spiky": "uint16"})
    assert spiky16 < all8 / 4, "the outlier's blur is most of the error"
    limit = spiky16 * 1.5
    choice = auto.choose(groups, reference, run, Constraints(max_error=limit), lambda _: None)
    assert choice.dtypes["smooth"] == "uint8"
    assert choice.dtypes["spiky"] in ("uint16", "float16")
    assert choice.met and choice.metrics.max_abs_error <= limit
    assert choice.weight_bytes == 256 + 512


def test_a_constraint_nothing_meets_returns_the_best_reached() -> None:
    groups, run, reference = _problem()
    exact = auto.choose(groups, reference, run, Constraints(max_error=1e-12), lambda _: None)
    assert exact.met and exact.dtypes == {"smooth": "none", "spiky": "none"}
    tight = Constraints(max_error=1e-12, max_bytes=1000)
    best = auto.choose(groups, reference, run, tight, lambda _: None)
    assert not best.met and best.weight_bytes == 2048


# --- whole builds ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auto_site(source_models: SourceModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("auto") / "site"
    (root / "models").mkdir(parents=True)
    shutil.copy(source_models.k2_cnn_h5, root / "models" / "cnn.h5")
    rng = np.random.default_rng(8)
    np.savez(root / "samples.npz", image=rng.random((64, 8, 8, 1), dtype=np.float32))
    text = '[project]\ntargets = ["web"]\n'
    for fmt in ("graph", "layers"):
        text += (
            f'\n[[models]]\nname = "cnn-{fmt}"\nsource = "models/cnn.h5"\nformat = "{fmt}"\n'
            'quantize = "auto"\nsamples = "samples.npz"\nmin_top1 = 1.0\nmax_error = 0.002\n'
        )
    (root / "bundle.toml").write_text(text)
    build.build(manifest.load(root / "bundle.toml"))
    return root


@pytest.mark.slow
@needs_node
def test_auto_picks_per_weight_and_the_runtime_confirms(auto_site: Path) -> None:
    report = json.loads((auto_site / "dist" / "bundle-report.json").read_text())
    for m in report["models"]:
        chosen = m["quantize_auto"]
        assert m["quantize"] == "auto"
        assert chosen["constraints"] == {"min_top1": 1.0, "max_error": 0.002}
        names = [n for names in chosen["table"].values() for n in names]
        assert len(names) == len(set(names)) > 0
        assert set(chosen["table"]) <= {"uint8", "uint16", "float16", "none"}
        judged = chosen["judged_in_tensorflow"]
        assert judged["top1_agreement"] == 1.0 and judged["max_abs_error"] <= 0.002
        # The shipping runtime measures what TensorFlow judged, to float rounding.
        assert m["top1_agreement"]["4.22.0"] == 1.0
        assert m["max_abs_error"]["4.22.0"] <= 0.002
        assert abs(m["max_abs_error"]["4.22.0"] - judged["max_abs_error"]) < 1e-4
        assert m["weight_bytes"] == chosen["weight_bytes"]
        # Not everything at 32 bits: the point is to be smaller.
        assert chosen["weight_bytes"] < m["params"] * 4


@pytest.mark.slow
@needs_node
def test_constraints_nothing_meets_fail_with_the_best_reached(
    auto_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    site = tmp_path / "site"
    shutil.copytree(auto_site, site)
    monkeypatch.chdir(site)
    before = {p: p.read_bytes() for p in (site / "dist").rglob("*") if p.is_file()}
    text = (site / "bundle.toml").read_text()
    (site / "bundle.toml").write_text(text.replace("max_error = 0.002", "max_error = 1e-15", 1))
    assert main(["build", "bundle.toml"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(
        'error: model "cnn-graph": quantize "auto": no choice of dtypes meets min_top1 = 1.0, '
        "max_error = 1e-15 on the samples; the best reached gives top-1 agreement 100.00%, "
        "max error "
    )
    assert err.endswith(
        "weight bytes. Loosen a constraint, or give samples that represent the model's real inputs"
    )
    assert {p: p.read_bytes() for p in (site / "dist").rglob("*") if p.is_file()} == before


@pytest.mark.slow
@needs_node
def test_max_bytes_checks_a_fixed_quantize(
    auto_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    site = tmp_path / "site"
    shutil.copytree(auto_site, site)
    monkeypatch.chdir(site)
    (site / "bundle.toml").write_text(
        '[project]\ntargets = ["web"]\n\n[[models]]\nname = "cnn"\nsource = "models/cnn.h5"\n'
        'quantize = "float16"\nmax_bytes = 100\n'
    )
    assert main(["build", "bundle.toml"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    taken = re.fullmatch(
        r'error: model "cnn": its weights take ([\d,]+) bytes at quantize float16, over '
        r"max_bytes = 100; quantize more \(uint8\), or raise max_bytes",
        err,
    )
    assert taken is not None, err
    assert int(taken.group(1).replace(",", "")) > 100


@pytest.mark.slow
@needs_node
def test_the_terminal_says_what_auto_chose(
    auto_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    site = tmp_path / "site"
    shutil.copytree(auto_site, site)
    monkeypatch.chdir(site)
    assert main(["build", "bundle.toml"]) == 0
    out = capsys.readouterr().out
    report = json.loads((site / "dist" / "bundle-report.json").read_text())
    for m in report["models"]:
        chosen = m["quantize_auto"]
        mix = ", ".join(f"{len(names)} {dtype}" for dtype, names in chosen["table"].items())
        assert f"{m['name']}: quantize auto chose {mix} (" in out
