"""Fake ``accelerate.commands``."""
