"""Corral: build, run, govern and observe LLM agents on your own infrastructure."""

__version__ = "0.1.0"

__all__ = ["__version__"]
