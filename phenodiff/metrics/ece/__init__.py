"""Package marker for the `ece` evaluate module, so that setuptools ships its folder with phenodiff."""
