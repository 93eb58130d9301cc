"""jetson-compress: the command line and the stage pipeline (host side)."""
from jetson_compress.version import __version__

__all__ = ["__version__"]
