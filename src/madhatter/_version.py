"""The single source of madhatter's version (read by the build backend and `madhatter --version`)."""

__version__ = "0.1.0"
