"""Importing this package registers every method."""

from ssl_models.methods import simclr  # noqa: F401
