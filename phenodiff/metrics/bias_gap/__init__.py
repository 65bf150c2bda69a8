"""Package marker for the `bias_gap` evaluate module, so that setuptools ships its folder with phenodiff."""
