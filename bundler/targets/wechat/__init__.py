"""The WeChat mini-program target."""
