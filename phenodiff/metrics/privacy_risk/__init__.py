"""Package marker for the `privacy_risk` evaluate module, so that setuptools ships its folder with phenodiff."""
