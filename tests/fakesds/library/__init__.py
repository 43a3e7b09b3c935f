"""The fake sd-scripts' shared code (the real repository keeps its helpers in ``library/`` too)."""
