"""The qrag version, in a module of its own so that any module can import it without an import cycle."""

__version__ = "0.1.0"
