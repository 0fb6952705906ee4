"""Which tfjs kernels a bundle's models can reach, read statically from the installed packages.

A tfjs op (`conv2d`, `image.resizeBilinear`) is a module of tfjs-core's `dist/ops/`; it runs the
kernels whose names it imports from `kernel_names`, and the ops it imports run theirs. Following
those imports gives every kernel an op can reach, on every path (a batch past 32 rows included),
without running anything. The sources of ops:

- a graph model: each node's TensorFlow op, through the converter's own table
  (`tfjs-converter/metadata/kernel2op.json`), in the graph and in its function library;
- a layers model: the core ops that tfjs-layers' code for its layer classes names (the module
  that defines each class, the engine that runs every model, the backend functions and
  activations they share);
- the fixed API the runtime exports (`api.py`), which the glue and the user's code call.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORE = "@tensorflow/tfjs-core"
CONVERTER_TABLE = "@tensorflow/tfjs-converter/metadata/kernel2op.json"
LAYERS = "@tensorflow/tfjs-layers"

_IMPORT = re.compile(
    r"""(?:import|export)\s*(?:\{([^}]*)\}|\*(?:\s+as\s+\w+)?)?\s*(?:from\s*)?['"]([^'"]+)['"]"""
)
_EXPORT_CONST = re.compile(r"^export (?:const|function) (\w+)", re.MULTILINE)
_KERNEL_CONFIG = re.compile(r"^export const (\w+)\s*=\s*\{\s*kernelName:\s*(\w+)", re.MULTILINE)
_KERNEL_NAME = re.compile(r"^export const (\w+) = '([^']+)';", re.MULTILINE)
_REGISTER_CLASS = re.compile(r"registerClass\((\w+)\)")
_TFC_NAME = re.compile(r"\btfc\.(\w+)(?:\.(\w+))?")
# Modules of tfjs-layers that every model runs through, whatever its layers: building a model
# from its config, predict (in batches), the backend functions and activations layers share.
LAYERS_ALWAYS = (
    "engine/topology.js",
    "engine/container.js",
    "engine/executor.js",
    "engine/input_layer.js",
    "engine/training.js",
    "engine/training_utils.js",
    "models.js",
    "variables.js",
    "activations.js",
    "initializers.js",
    "backend/tfjs_backend.js",
    "utils/generic_utils.js",
    "utils/math_utils.js",
    "utils/types_utils.js",
)


@dataclass(frozen=True)
class Unknown:
    """An op the converter's table does not know: tfjs cannot run a graph that has it."""

    op: str


class KernelIndex:
    """The ops and kernels of one installed tfjs (its `node_modules` folder)."""

    def __init__(self, node_modules: Path) -> None:
        self.node_modules = node_modules
        self.ops_dir = node_modules / CORE / "dist" / "ops"
        self.converter_table: dict[str, list[str]] = json.loads(
            (node_modules / CONVERTER_TABLE).read_text(encoding="utf-8")
        )
        self._ops: dict[str, Path] = {}
        self._namespaced: dict[str, Path] = {}
        for file in sorted(self.ops_dir.rglob("*.js")):
            if file.name.endswith("_test.js"):
                continue
            rel = file.relative_to(self.ops_dir)
            for name in _EXPORT_CONST.findall(_read(file)):
                if len(rel.parts) == 1:
                    self._ops.setdefault(name, file)
                else:
                    self._namespaced.setdefault(f"{rel.parts[0]}.{name}", file)
        for key, file in self._namespaced.items():
            self._ops.setdefault(key.split(".", 1)[1], file)

    def op_file(self, op: str) -> Path | None:
        """The module that defines tfjs op `op` (`conv2d`, `fused.conv2d`)."""
        return self._namespaced.get(op) if "." in op else self._ops.get(op)

    def is_op(self, name: str) -> bool:
        """True when `name` is a tfjs-core op."""
        return self.op_file(name) is not None

    def kernels_of_ops(self, ops: Iterable[str]) -> set[str]:
        """Every kernel the ops can run, through every op they call."""
        kernels: set[str] = set()
        for op in ops:
            file = self.op_file(op)
            if file is not None:
                kernels |= self._kernels_of_file(file)
        return kernels

    @functools.cache  # noqa: B019 (one index per install, kept for the process)
    def _kernels_of_file(self, start: Path) -> frozenset[str]:
        kernels: set[str] = set()
        seen: set[Path] = set()
        todo = [start]
        while todo:
            file = todo.pop()
            if file in seen:
                continue
            seen.add(file)
            for names, source in _IMPORT.findall(_read(file)):
                if not source.startswith("."):
                    continue
                if source.endswith("kernel_names"):
                    kernels.update(_names(names))
                    continue
                target = (file.parent / source).resolve().with_suffix(".js")
                # Only ops lead to kernels; ops.js itself would lead to all of them.
                if target.is_relative_to(self.ops_dir.resolve()) and target.name not in (
                    "ops.js",
                    "ops_for_converter.js",
                ):
                    todo.append(target)
        return frozenset(kernels)

    @functools.cache  # noqa: B019
    def kernel_configs(self, backend: str) -> dict[str, tuple[str, str]]:
        """Kernel name → (module, exported config) in a backend's `dist/kernels/`.

        Most modules are named after their kernel and export `<kernel>Config` (what tfjs's
        custom module tool assumes), but not all: FusedBatchNorm lives in BatchNorm.js.
        """
        names = dict(_KERNEL_NAME.findall(_read(self.node_modules / CORE / "dist/kernel_names.js")))
        folder = self.node_modules / f"@tensorflow/tfjs-backend-{backend}/dist/kernels"
        found: dict[str, tuple[str, str]] = {}
        for file in sorted(folder.glob("*.js")):
            for export, ident in _KERNEL_CONFIG.findall(_read(file)):
                kernel = names.get(ident, ident)
                # The module named after the kernel wins over one that also registers it.
                if kernel not in found or file.stem == kernel:
                    found[kernel] = (file.stem, export)
        return found

    # --- graph models -------------------------------------------------------------------

    def graph_ops(self, doc: Mapping[str, Any]) -> list[str]:
        """The TensorFlow ops of a graph model.json, in its graph and its function library."""
        topology = doc.get("modelTopology") or {}
        found = [n.get("op", "") for n in topology.get("node", [])]
        for function in (topology.get("library") or {}).get("function", []) or []:
            found += [n.get("op", "") for n in function.get("nodeDef", []) or []]
        return sorted({op for op in found if op})

    def graph_kernels(self, doc: Mapping[str, Any]) -> tuple[set[str], list[Unknown]]:
        """The kernels a graph model can run, and the ops the converter cannot run at all."""
        ops: set[str] = set()
        unknown = []
        for tf_op in self.graph_ops(doc):
            mapped = self.converter_table.get(tf_op)
            if mapped is None:
                unknown.append(Unknown(tf_op))
            else:
                ops.update(mapped)
        return self.kernels_of_ops(ops), unknown

    # --- layers models ------------------------------------------------------------------

    @functools.cached_property
    def _layers_dist(self) -> Path:
        return self.node_modules / LAYERS / "dist"

    @functools.cached_property
    def _layer_modules(self) -> dict[str, Path]:
        """Layer class name → the tfjs-layers module that defines it."""
        found: dict[str, Path] = {}
        for file in sorted((self._layers_dist / "layers").rglob("*.js")):
            for name in _REGISTER_CLASS.findall(_read(file)):
                found.setdefault(name, file)
        return found

    def layers_kernels(self, doc: Mapping[str, Any]) -> set[str]:
        """The kernels a layers model can run: those of the modules its classes live in."""
        modules = {self._layers_dist / rel for rel in LAYERS_ALWAYS}
        for name in layer_classes(doc.get("modelTopology") or {}):
            module = self._layer_modules.get(name)
            if module is not None:
                modules.add(module)
        ops: set[str] = set()
        for module in sorted(modules):
            ops |= self._core_names(module)
        return self.kernels_of_ops(ops)

    @functools.cache  # noqa: B019
    def _core_names(self, module: Path) -> frozenset[str]:
        """The tfjs-core ops a tfjs-layers module names (`tfc.x`, or imported by name)."""
        text = _read(module)
        names: set[str] = set()
        for first, second in _TFC_NAME.findall(text):
            names.add(f"{first}.{second}" if f"{first}.{second}" in self._namespaced else first)
        for imported, source in _IMPORT.findall(text):
            if source == CORE:
                names.update(_names(imported))
        return frozenset(n for n in names if self.is_op(n))


@functools.cache
def index(node_modules: Path) -> KernelIndex:
    """The index of one installed tfjs, made once per process (`bundler watch` rebuilds reuse
    it, and what it has worked out)."""
    return KernelIndex(node_modules)


def tool_export(kernel: str) -> str:
    """The config name tfjs's custom module tool imports a kernel by (its util.ts)."""
    if kernel.startswith("_"):
        return f"_{kernel[1].lower()}{kernel[2:]}Config"
    return f"{kernel[0].lower()}{kernel[1:]}Config"


def layer_classes(node: Any) -> Iterator[str]:
    """Every `class_name` in a Keras model config, nested models and wrapped layers included."""
    if isinstance(node, dict):
        name = node.get("class_name")
        if isinstance(name, str):
            yield name
        for value in node.values():
            yield from layer_classes(value)
    elif isinstance(node, list):
        for value in node:
            yield from layer_classes(value)


def _names(imported: str) -> list[str]:
    """`a, b as c` → the original names [a, b]."""
    names = []
    for part in imported.split(","):
        part = part.strip()
        if part:
            names.append(part.split(" as ")[0].strip())
    return names


@functools.cache
def _read(file: Path) -> str:
    return file.read_text(encoding="utf-8", errors="replace")
