"""The model stage: a manifest's models → converted, quantized, sharded, verified artifacts."""
