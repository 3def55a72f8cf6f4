"""The package version (one place; genlab/__init__ and run markers read it)."""
__version__ = "0.1.0"
