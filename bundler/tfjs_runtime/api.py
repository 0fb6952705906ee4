"""The fixed API of a bundle's tfjs runtime: what `tf` holds, the same in every bundle.

Exporting tfjs's whole namespace would keep every core op in the file; this list keeps what
the glue, tfjsPlugin and an app's pre- and post-processing need (docs/runtime.md). The ops
here have their kernels in every bundle, whatever its models use.
"""

from __future__ import annotations

# Tensors, memory, backends and platforms: no kernels of their own.
CORE = (
    "Tensor",
    "tensor",
    "scalar",
    "tensor1d",
    "tensor2d",
    "tensor3d",
    "tensor4d",
    "zeros",
    "ones",
    "tidy",
    "dispose",
    "keep",
    "memory",
    "ready",
    "engine",
    "env",
    "ENV",
    "getBackend",
    "setBackend",
    "findBackend",
    "findBackendFactory",
    "registerBackend",
    "removeBackend",
    "registerKernel",
    "getKernel",
    "getKernelsForBackend",
    "io",
    "browser",
    "util",
)
# Ops an app runs around a model: inputs from pixels, outputs to answers.
OPS = (
    "add",
    "sub",
    "mul",
    "div",
    "cast",
    "reshape",
    "expandDims",
    "squeeze",
    "slice",
    "gather",
    "concat",
    "stack",
    "argMax",
    "softmax",
    "topk",
)
# `browser` brings these ops: fromPixels runs the FromPixels kernel.
NAMESPACE_OPS = ("fromPixels",)
GRAPH = ("loadGraphModel", "GraphModel")
LAYERS = ("loadLayersModel", "LayersModel")
# What tfjsPlugin's configPlugin takes as `webgl` (tfjs-wechat's initWebGL).
WEBGL = ("setWebGLContext", "GPGPUContext", "MathBackendWebGL")
