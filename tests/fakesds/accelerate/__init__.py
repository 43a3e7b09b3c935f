"""Fake ``accelerate`` package: only ``accelerate.commands.launch`` exists."""
