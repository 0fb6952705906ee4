"""The tflite target: each model as `<out>/tflite/<name>/<hash>/<name>.tflite`.

Converted by TensorFlow Lite's converter and checked in its interpreter in the model stage
(convert.py, through bundler/models/exports.py); here the files are placed and described.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bundler.manifest import Config, ModelConfig
from bundler.models import exports
from bundler.models.exports import Exported
from bundler.targets.exported import ExportTarget

# Unquantized weights should match the source to rounding (as for tfjs, stage.py).
FLOAT_TOLERANCE = 1e-3


class TfliteExporter:
    """`quantize` and `[tflite] select_tf_ops` shape the file."""

    kind = "tflite"

    def options(self, config: Config, model: ModelConfig) -> dict[str, Any]:
        """The fingerprint's part: whether select TensorFlow ops are allowed, and verify."""
        verified = model.verify and config.project.verify
        return {"select_tf_ops": config.tflite.select_tf_ops, "verify": verified}

    def export(self, config: Config, model: ModelConfig, say: exports.Progress) -> Exported:
        """Convert with TFLite's converter and check in its interpreter (TensorFlow loads)."""
        from bundler.targets.tflite import convert

        return convert.export(config, model, say)


class TfliteTarget(ExportTarget):
    """A `.tflite` file per model."""

    name = "tflite"

    def exporter(self, config: Config) -> TfliteExporter:
        """TFLite's converter."""
        return TfliteExporter()

    def warnings(self, config: Config, described: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Files that need the Flex delegate; unquantized files that differ from the source."""
        found = []
        for model in config.models:
            facts = described[model.name]
            if facts["select_tf_ops"]:
                found.append(
                    f'model "{model.name}": the TFLite file uses select TensorFlow ops '
                    f"({', '.join(facts['select_tf_ops'])}); the app must link TFLite's Flex "
                    "delegate (tensorflow-lite-select-tf-ops on Android, TensorFlowLiteSelectTfOps "
                    "on iOS), which adds megabytes"
                )
            error = facts[exports.ERROR]
            if model.quantize.is_none and error is not None and error > FLOAT_TOLERANCE:
                found.append(
                    f'model "{model.name}": unquantized, yet TensorFlow Lite differs from the '
                    f"source by up to {error:.3g}; check the model's ops"
                )
        return found


TARGET = TfliteTarget()
