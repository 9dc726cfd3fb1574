"""schemad: a PostgreSQL schema daemon."""

__version__ = "0.1.0"
