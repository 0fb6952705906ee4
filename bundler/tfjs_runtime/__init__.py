"""A tfjs runtime built for a bundle: one minified file, only the kernels its models can reach."""
