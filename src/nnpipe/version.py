"""nnpipe's version (one place: the package, the CLI and exported model archives read it)."""

__version__ = "0.1.0"
