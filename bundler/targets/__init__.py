"""The targets: each renders the files of one platform from the models' artifacts."""
