"""What runs while a user works: `bundler watch` and `bundler serve`."""
