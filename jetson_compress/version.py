"""The single version source of jetson-compress (pyproject.toml reads it; device code may import it)."""
__version__ = "0.1.0"
