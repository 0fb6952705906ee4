"""The keras target: each layers model as `<out>/keras/<name>/<hash>/<name>.keras` (or `.h5`).

Saved by Keras and loaded back to check it in the model stage (convert.py, through
bundler/models/exports.py); here the files are placed and described.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bundler.manifest import Config, ModelConfig
from bundler.models import exports
from bundler.models.exports import Exported
from bundler.targets.exported import ExportTarget


class KerasExporter:
    """`[keras] format` shapes the file."""

    kind = "keras"

    def options(self, config: Config, model: ModelConfig) -> dict[str, Any]:
        """The fingerprint's part: the file format, and verify."""
        return {"format": config.keras.format, "verify": model.verify and config.project.verify}

    def export(self, config: Config, model: ModelConfig, say: exports.Progress) -> Exported:
        """Save with Keras and load back (TensorFlow loads)."""
        from bundler.targets.keras import convert

        return convert.export(config, model, say)


class KerasTarget(ExportTarget):
    """A Keras file per layers model."""

    name = "keras"

    def exporter(self, config: Config) -> KerasExporter:
        """Keras' own writer."""
        return KerasExporter()

    def warnings(self, config: Config, described: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Models whose quantize the Keras file does not take."""
        return [
            f'model "{m.name}": quantize applies to tfjs and TFLite; its Keras file keeps '
            "the source's float weights"
            for m in config.models
            if not m.quantize.is_none
        ]


TARGET = KerasTarget()
