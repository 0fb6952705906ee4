"""Build the tfjs runtime file a target ships: the kernels its models reach, the fixed API.

    Request(version, flavour) + the models → Spec (kernels, graph ops) → the file, cached in
    `<cache_dir>/runtimes/<key>/` (and the shared store, when the manifest names one) by
    everything that goes into it.

The Node side (`build_runtime.cjs`) runs tfjs's custom module tool (`tools/custom_module` in
@tensorflow/tfjs) and esbuild, both from npm, pinned, installed on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bundler.errors import ToolError
from bundler.render import render
from bundler.runtimes import NO_NODE, NpmSet, ensure_packages, run_tool, tail, tfjs
from bundler.tfjs_runtime import api
from bundler.tfjs_runtime.kernels import index as kernels_index
from bundler.tfjs_runtime.kernels import tool_export

if TYPE_CHECKING:
    from bundler.models.cache import Cache

ESBUILD_VERSION = "0.28.2"
# fetch-wechat: the fetch that tfjsPlugin's configPlugin takes (tfjs-wechat README).
FETCH_WECHAT_VERSION = "0.0.3"
# The language level of tfjs's own ES module builds (dist/*.js): nothing is lowered.
JS_TARGET = "es2017"
BACKENDS = ("cpu", "webgl")
BUILD_TIMEOUT_S = 300.0
RUNNER = Path(__file__).with_name("build_runtime.cjs")
ENTRY_TEMPLATE = "runtime/entry.js.j2"
# The code a spec comes from: a change to it makes every kept spec a miss.
SPEC_CODE = tuple(Path(__file__).with_name(name) for name in ("api.py", "kernels.py", "build.py"))
# Bump when what goes into a runtime file changes in a way the key does not see.
FORMAT = 1
CACHE_SPACE = "runtimes"  # <cache_dir>/runtimes/<key>/: the file, and what it lacks
SPEC_SPACE = "runtime-specs"  # <cache_dir>/runtime-specs/<key>/: the kernels models reach
SPEC_FILE = "spec.json"
CODE_FILE = "runtime.js"
META_FILE = "runtime.json"

# flavour → (esbuild format, global name)
FLAVOURS = {
    "wechat": ("cjs", None),  # require.async('../tfjs/index.js') → {tf, webgl, fetchWechat}
    "web": ("iife", "tf"),  # <script src> → the global `tf`
}


@dataclass(frozen=True)
class Request:
    """What a target asks for: a runtime of this tfjs version, in this flavour."""

    version: str
    flavour: str  # a key of FLAVOURS


@dataclass(frozen=True)
class Spec:
    """Everything a runtime file is made of."""

    version: str
    flavour: str
    graph: bool
    layers: bool
    kernels: tuple[str, ...]  # registered by tfjs's custom module tool
    graph_ops: tuple[str, ...]  # TensorFlow ops the converter must run
    # (backend, kernel, module, export): kernels whose module or config the tool would not
    # find by the kernel's name (FusedBatchNorm in BatchNorm.js, LRN's LRNConfig, ...): the
    # entry registers them itself.
    renamed: tuple[tuple[str, str, str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Every field, for the build cache."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Spec:
        """The spec `to_json` wrote."""
        return cls(
            version=data["version"],
            flavour=data["flavour"],
            graph=data["graph"],
            layers=data["layers"],
            kernels=tuple(data["kernels"]),
            graph_ops=tuple(data["graph_ops"]),
            renamed=tuple((b, k, m, e) for b, k, m, e in data["renamed"]),
        )

    @property
    def kernel_count(self) -> int:
        """How many kernels the runtime registers (per backend that has them)."""
        return len(self.kernels) + len({kernel for _, kernel, _, _ in self.renamed})


@dataclass(frozen=True)
class Runtime:
    """A built runtime file."""

    spec: Spec
    code: bytes
    skipped: tuple[str, ...]  # "webgl: Kernel": kernels one backend lacks (tfjs's own gaps)

    @property
    def sha256(self) -> str:
        """The file's sha256, hex."""
        return hashlib.sha256(self.code).hexdigest()

    @property
    def id(self) -> str:
        """What verification results are kept under: the version and the file's bytes."""
        return f"{self.spec.version} {self.sha256[:16]}"

    def to_json(self) -> dict[str, Any]:
        """What the report says of it."""
        return {
            "tfjs_version": self.spec.version,
            "bytes": len(self.code),
            "sha256": self.sha256,
            "graph": self.spec.graph,
            "layers": self.spec.layers,
            "kernels": sorted({*self.spec.kernels, *(k for _, k, _, _ in self.spec.renamed)}),
            "missing_in_tfjs": list(self.skipped),
        }

    @property
    def label(self) -> str:
        """How messages name it."""
        return f"the bundle's tfjs {self.spec.version} runtime ({self.spec.flavour})"


def tools(version: str) -> NpmSet:
    """The npm packages a runtime is built from: tfjs (with its tools), esbuild, fetch-wechat."""
    stock = tfjs(version)  # checks the version
    return NpmSet(
        f"tfjs-build-{version}",
        (
            *stock.packages,
            ("esbuild", ESBUILD_VERSION),
            ("fetch-wechat", FETCH_WECHAT_VERSION),
        ),
        f"@tensorflow/tfjs {version} and esbuild {ESBUILD_VERSION}, to build the runtime",
    )


def spec(request: Request, models: Sequence[tuple[str, Mapping[str, Any]]], packages: Path) -> Spec:
    """The kernels and ops the models (format, model.json) reach, with the fixed API's."""
    index = kernels_index(packages / "node_modules")
    kernels = index.kernels_of_ops((*api.OPS, *api.NAMESPACE_OPS))
    graph_ops: set[str] = set()
    for fmt, doc in models:
        if fmt == "graph":
            found, _unknown = index.graph_kernels(doc)
            kernels |= found
            # An op the converter does not know fails verification by its name.
            graph_ops.update(op for op in index.graph_ops(doc) if op in index.converter_table)
        else:
            kernels |= index.layers_kernels(doc)
    # tfjs's custom module tool imports kernel K as `<k>Config` from kernels/K.js and skips
    # it when that module is absent; register those it would miss or misname in the entry.
    renamed = []
    for kernel in sorted(kernels):
        configs = {b: index.kernel_configs(b).get(kernel) for b in BACKENDS}
        if any(c is not None and c != (kernel, tool_export(kernel)) for c in configs.values()):
            renamed += [(b, kernel, c[0], c[1]) for b, c in configs.items() if c is not None]
    kernels -= {kernel for _, kernel, _, _ in renamed}
    return Spec(
        version=request.version,
        flavour=request.flavour,
        renamed=tuple(renamed),
        graph=any(fmt == "graph" for fmt, _ in models),
        layers=any(fmt == "layers" for fmt, _ in models),
        kernels=tuple(sorted(kernels)),
        graph_ops=tuple(sorted(graph_ops)),
    )


def entry(spec: Spec) -> str:
    """The entry module: the fixed API, from the custom module and the model packages."""
    names = [*api.CORE, *api.OPS]
    graph = list(api.GRAPH) if spec.graph else []
    layers = list(api.LAYERS) if spec.layers else []
    return render(
        ENTRY_TEMPLATE,
        flavour=spec.flavour,
        version=spec.version,
        core=names,
        graph=spec.graph,
        graph_api=graph,
        layers=spec.layers,
        layers_api=layers,
        webgl=list(api.WEBGL),
        api=[*names, *graph, *layers],
        renamed=[
            (f"@tensorflow/tfjs-backend-{b}/dist/kernels/{module}", export, f"{kernel}_{b}")
            for b, kernel, module, export in spec.renamed
        ],
    )


def key(spec: Spec) -> str:
    """The cache key: everything that goes into the file."""
    facts = {
        "format": FORMAT,
        "spec": [spec.version, spec.flavour, spec.graph, spec.layers],
        "kernels": list(spec.kernels),
        "renamed": [list(r) for r in spec.renamed],
        "graph_ops": list(spec.graph_ops),
        "entry": entry(spec),
        "builder": RUNNER.read_text(encoding="utf-8"),
        # What else shapes the file (the job, the banner, the language level, the backends),
        # all in this module's code.
        "code": Path(__file__).read_text(encoding="utf-8"),
        "esbuild": ESBUILD_VERSION,
        "fetch_wechat": FETCH_WECHAT_VERSION,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def for_models(
    request: Request,
    models: Sequence[tuple[str, Mapping[str, Any]]],
    store: Cache,
    say: Callable[[str], None] | None = None,
) -> Runtime:
    """The runtime file `request` asks for, for these models (format, model.json): its spec and
    its file from the build cache (or the shared store behind it), or made now and kept there.
    The npm packages are installed only to make one of them: a build that finds both (a
    second machine of the team) needs neither npm nor Node."""
    npm = tools(request.version)

    @functools.cache
    def packages() -> Path:
        return ensure_packages(npm.folder, dict(npm.packages), purpose=npm.purpose, log=say)

    def made() -> dict[str, bytes]:
        return {SPEC_FILE: json.dumps(spec(request, models, packages()).to_json()).encode()}

    kept = store.derived(SPEC_SPACE, spec_key(request, models), [SPEC_FILE], made)
    return build(Spec.from_json(json.loads(kept[SPEC_FILE])), packages, store, say)


def spec_key(request: Request, models: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """What a spec is derived from: the request, the models, the pinned packages whose kernels
    it reads, and the code that reads them."""
    facts = {
        "format": FORMAT,
        "request": [request.version, request.flavour],
        "packages": tfjs(request.version).packages,
        # The topologies only (the kernels come from their ops and layers, not the weights),
        # as a set: the models' order, or a model shipped twice, changes nothing.
        "models": sorted(
            {json.dumps([fmt, doc.get("modelTopology")], sort_keys=True) for fmt, doc in models}
        ),
        "code": [path.read_text(encoding="utf-8") for path in SPEC_CODE],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def build(
    spec: Spec,
    packages: Callable[[], Path],
    store: Cache,
    say: Callable[[str], None] | None = None,
) -> Runtime:
    """The runtime file for `spec`: from the build cache (or the shared store behind it), or
    built now (with the npm packages `packages()` installs) and kept there."""

    def made() -> dict[str, bytes]:
        if say is not None:
            say(
                f"building the tfjs {spec.version} runtime for {spec.flavour} "
                f"({spec.kernel_count} kernels)"
            )
        code, skipped = _run(spec, packages())
        return {CODE_FILE: code, META_FILE: json.dumps({"skipped": skipped}).encode()}

    files = store.derived(CACHE_SPACE, key(spec), [CODE_FILE, META_FILE], made)
    return Runtime(spec, files[CODE_FILE], tuple(json.loads(files[META_FILE])["skipped"]))


def _run(spec: Spec, packages: Path) -> tuple[bytes, list[str]]:
    node = shutil.which("node")
    if node is None:
        raise ToolError(NO_NODE)
    fmt, global_name = FLAVOURS[spec.flavour]
    with tempfile.TemporaryDirectory(prefix="bundler-runtime-") as tmp:
        work = Path(tmp)
        (work / "entry.js").write_text(entry(spec), encoding="utf-8")
        ops_model = None
        if spec.graph:
            # The custom module tool reads the converter's ops from model.json files: one that
            # lists every op of the bundle's graphs stands for them all.
            ops_model = work / "graph_ops.json"
            nodes = [{"name": f"n{i}", "op": op} for i, op in enumerate(spec.graph_ops)]
            ops_model.write_text(json.dumps({"modelTopology": {"node": nodes}}), "utf-8")
        out = work / "runtime.js"
        job = {
            "packages": str(packages),
            "work": str(work),
            "kernels": list(spec.kernels),
            "renamed": [list(r) for r in spec.renamed],
            "backends": list(BACKENDS),
            "graph_ops_model": str(ops_model) if ops_model else None,
            "graph_ops": list(spec.graph_ops),
            "entry": str(work / "entry.js"),
            "format": fmt,
            "global_name": global_name,
            "target": JS_TARGET,
            "banner": _banner(spec),
            "out": str(out),
        }
        job_path = work / "job.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        proc = run_tool(
            [node, str(RUNNER), str(job_path)],
            None,
            BUILD_TIMEOUT_S,
            f"building the tfjs {spec.version} runtime took longer than {BUILD_TIMEOUT_S:.0f} s",
        )
        result = _last_json(proc.stdout)
        if proc.returncode != 0 or not result.get("ok"):
            detail = str(result.get("error") or tail(proc.stderr) or "(no output)")
            raise ToolError(f"cannot build the tfjs {spec.version} runtime:\n{tail(detail)}")
        return out.read_bytes(), list(result.get("skipped", []))


def _banner(spec: Spec) -> str:
    return (
        f"/* TensorFlow.js {spec.version} (Apache-2.0, github.com/tensorflow/tfjs), built for "
        f"this bundle by the model bundler: {spec.kernel_count} kernels. */\n"
        "var __bundlerGlobal=typeof globalThis!=='undefined'?globalThis:"
        "typeof global!=='undefined'?global:typeof self!=='undefined'?self:this;"
    )


def _last_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}
