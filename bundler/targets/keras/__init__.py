"""The Keras target: a `.keras` (or `.h5`) file per layers model, back to Python."""
