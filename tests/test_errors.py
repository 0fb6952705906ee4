"""ModelError names its model as a field; the message the user reads starts with it."""

from __future__ import annotations

from bundler.errors import ModelError


def test_a_model_error_names_its_model_once() -> None:
    err = ModelError("TensorFlow could not convert x.h5: bad file", model="digits")
    assert err.model == "digits"
    assert err.message == "TensorFlow could not convert x.h5: bad file"
    assert str(err) == 'model "digits": TensorFlow could not convert x.h5: bad file'


def test_of_names_an_unnamed_error_and_keeps_a_named_one() -> None:
    cause = ValueError("inner")
    unnamed = ModelError("weightsManifest is not a list")
    unnamed.__cause__ = cause
    named = unnamed.of("digits")
    assert named.model == "digits" and named.__cause__ is cause
    assert str(named) == 'model "digits": weightsManifest is not a list'
    assert named.of("other") is named


def test_problems_follow_the_named_message() -> None:
    err = ModelError("2 weights are bad:", model="m", problems=("a", "b"))
    assert str(err) == 'model "m": 2 weights are bad:\n  - a\n  - b'
