"""The measuring tools' tests use the product tests' tiny study (tests/conftest.py)."""

from tests.conftest import TinyStudy, tiny_study

__all__ = ["TinyStudy", "tiny_study"]
