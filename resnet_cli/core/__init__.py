"""The foundation every layer may use: errors and exit codes, the console, signals, the record schema, files
written whole or not at all."""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it here)
