"""Thin shim so that ``python setup.py develop`` (the seed's instructions) keeps working.

All metadata lives in ``pyproject.toml``.
"""
from setuptools import setup

setup()
