"""Train the example site's two digit classifiers and write them to ``example_site/models/``.

The models are trained with Keras 3 on scikit-learn's bundled 8x8 digits (no download):

- ``models/digits_mlp.keras``: a small dense network in the Keras 3 native format, input
  ``pixels`` of shape (64,).
- ``models/digits_cnn/``: a small convolutional network (with a BatchNormalization layer, so
  that the bundler's BN folding has something to fold) exported as a TensorFlow SavedModel with
  a ``serving_default`` signature, input ``image`` of shape (8, 8, 1).
- ``models/samples.json``: one test image per digit with the probabilities both trained models
  give for it, so tests and demo pages can check that a converted model still predicts the same.
- ``models/digits_test.npz``: the whole test split (450 images as ``image``, (450, 8, 8, 1), and
  their ``label``), the samples the bundle verifies digits_cnn on and picks its quantization by.

The outputs are committed to the repository, so users do not need to run this script; it is
here so the models can be rebuilt and audited. Run it with ``python example_site/train.py``
from any directory; it always writes next to itself.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, TypeAlias

# Read only when TensorFlow is imported: without it kernels may pick non-deterministic
# algorithms and a rebuild would not reproduce the committed weights.
os.environ["TF_DETERMINISTIC_OPS"] = "1"
# The CNN is exported as a TF SavedModel, which only the TensorFlow backend can do.
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

Floats: TypeAlias = npt.NDArray[np.float32]
Labels: TypeAlias = npt.NDArray[np.int64]

HERE = Path(__file__).resolve().parent
MODELS_DIR = HERE / "models"
MLP_PATH = MODELS_DIR / "digits_mlp.keras"
CNN_DIR = MODELS_DIR / "digits_cnn"
SAMPLES_PATH = MODELS_DIR / "samples.json"
TEST_SPLIT_PATH = MODELS_DIR / "digits_test.npz"

SEED = 0
NUM_CLASSES = 10
# The MLP learns more slowly than the CNN: 40 epochs leave it near 97% test accuracy, 100 reach
# about 98%, and both still train in seconds on a laptop CPU.
MLP_EPOCHS = 100
CNN_EPOCHS = 40
BATCH_SIZE = 32
MIN_ACCURACY = 0.95


def load_data() -> tuple[Floats, Floats, Labels, Labels]:
    """Return ``(x_train, x_test, y_train, y_test)`` with pixels as float32 in [0, 1]."""
    digits = load_digits()
    # Pixel values are integers 0..16; dividing by 16 keeps every value exactly representable
    # in 4 decimals, so the rounded pixels in samples.json are the very inputs the models saw.
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y
    )
    return x_train, x_test, y_train, y_test


def build_mlp() -> keras.Model:
    inputs = keras.Input(shape=(64,), name="pixels")
    h = keras.layers.Dense(64, activation="relu", name="dense_1")(inputs)
    h = keras.layers.Dense(32, activation="relu", name="dense_2")(h)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probs")(h)
    return keras.Model(inputs, outputs, name="digits_mlp")


def build_cnn() -> keras.Model:
    inputs = keras.Input(shape=(8, 8, 1), name="image")
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv_1")(inputs)
    # BN sits between the conv and its activation, the usual place, and the pattern the
    # bundler's BN folding rewrites into the conv's kernel and bias.
    h = keras.layers.BatchNormalization(name="bn_1")(h)
    h = keras.layers.Activation("relu", name="relu_1")(h)
    h = keras.layers.MaxPooling2D(2, name="pool_1")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_2")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probs")(h)
    return keras.Model(inputs, outputs, name="digits_cnn")


def train(
    model: keras.Model,
    x_train: Floats,
    y_train: Labels,
    x_test: Floats,
    y_test: Labels,
    epochs: int,
) -> float:
    """Fit ``model`` and return its test accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # shuffle=True is driven by the global seed, so it stays reproducible.
    model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs, shuffle=True, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    accuracy = float(accuracy)
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"{model.name}: test accuracy {accuracy:.4f} is below {MIN_ACCURACY}")
    return accuracy


def pick_samples(x_test: Floats, y_test: Labels) -> tuple[Floats, Labels]:
    """Return the first test image of each class 0..9, in class order."""
    indices = [int(np.flatnonzero(y_test == digit)[0]) for digit in range(NUM_CLASSES)]
    return x_test[indices], y_test[indices]


def predict(model: keras.Model, x: Floats) -> Floats:
    # A direct call in inference mode avoids predict()'s batching and progress output and
    # uses the BN moving statistics, which is what the exported signature does too.
    return np.asarray(model(x, training=False), dtype=np.float32)


def round_rows(rows: Floats, decimals: int) -> list[list[float]]:
    return [[round(float(v), decimals) for v in row] for row in rows]


def write_samples(pixels: Floats, labels: Labels, mlp_probs: Floats, cnn_probs: Floats) -> None:
    data: dict[str, Any] = {
        "labels": [int(label) for label in labels],
        "pixels": round_rows(pixels, 4),
        # 6 decimals keeps the file small while staying well inside the 1e-5 tolerance that
        # checks against these numbers use.
        "mlp_probs": round_rows(mlp_probs, 6),
        "cnn_probs": round_rows(cnn_probs, 6),
    }
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    SAMPLES_PATH.write_text(text + "\n", encoding="utf-8")


def main() -> None:
    # Belt and braces with TF_DETERMINISTIC_OPS: also raises if a non-deterministic op is used.
    tf.config.experimental.enable_op_determinism()

    x_train, x_test, y_train, y_test = load_data()
    MODELS_DIR.mkdir(parents=True, exist_ok=True)

    # Reseeding before each model makes each one's weights independent of the other's
    # training, so changing one model's epochs does not silently change the other model.
    keras.utils.set_random_seed(SEED)
    mlp = build_mlp()
    mlp_accuracy = train(mlp, x_train, y_train, x_test, y_test, MLP_EPOCHS)
    mlp.save(MLP_PATH)

    keras.utils.set_random_seed(SEED)
    cnn = build_cnn()
    to_image = (-1, 8, 8, 1)
    cnn_accuracy = train(
        cnn, x_train.reshape(to_image), y_train, x_test.reshape(to_image), y_test, CNN_EPOCHS
    )
    # Start from an empty folder so no file from an older export can survive next to the new
    # one and end up committed.
    if CNN_DIR.exists():
        shutil.rmtree(CNN_DIR)
    cnn.export(str(CNN_DIR), format="tf_saved_model", verbose=False)

    # The bundle's samples for digits_cnn (bundle.toml): every test image, as the CNN takes it.
    np.savez_compressed(TEST_SPLIT_PATH, image=x_test.reshape(to_image), label=y_test)

    sample_pixels, sample_labels = pick_samples(x_test, y_test)
    write_samples(
        sample_pixels,
        sample_labels,
        predict(mlp, sample_pixels),
        predict(cnn, sample_pixels.reshape(to_image)),
    )

    print(f"digits_mlp test accuracy: {mlp_accuracy:.4f}")
    print(f"digits_cnn test accuracy: {cnn_accuracy:.4f}")
    print(f"wrote {MLP_PATH}, {CNN_DIR}, {SAMPLES_PATH}, {TEST_SPLIT_PATH}")


if __name__ == "__main__":
    main()
