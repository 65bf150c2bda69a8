"""Package marker for the `classification` evaluate module, so that setuptools ships its folder with phenodiff."""
