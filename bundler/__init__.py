"""The model bundler: TensorFlow/Keras models → verified, sharded TensorFlow.js bundles."""

__version__ = "0.1.0"
