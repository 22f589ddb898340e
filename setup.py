"""setuptools shim: the package metadata lives in pyproject.toml (``pip install .``)."""

from setuptools import setup

setup()
