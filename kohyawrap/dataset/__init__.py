"""Datasets for sd-scripts: build one from photos, simulate its buckets, lint it.

Modules (import them directly; this package imports nothing, so ``buckets`` stays light):
``scan`` (read folders), ``layout`` (pure: plan the files), ``build`` (the one writer, and
``lint_dataset``), ``buckets`` (pure: sd-scripts' bucketing and batch count), ``lint`` (pure:
the checks), ``imaging`` (the pillow adapter), ``example`` (synthetic photos for the demo).
"""
