"""The static web site target."""
