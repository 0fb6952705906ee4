"""The TensorFlow Lite target: a `.tflite` file per model, for Android and iOS apps."""
