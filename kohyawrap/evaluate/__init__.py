"""Is the LoRA any good? What a run's results say, computed from plain data.

- ``options``: what the grid renders (``--grid epochs=...,strengths=...,seeds=N``).
- ``prompts``: prompt lines in sd-scripts' syntax: made from the dataset's trigger and class words,
  or read from the user's ``--sample-prompts`` file.
- ``gridplan``: which checkpoints, strengths, seeds and prompts; the prompt file and image names of
  each generation call; the time it takes.
- ``record``: what a grid did, as recorded in the run's manifest.
- ``loss``: the loss verdict (still falling, flat, over-fitting, NaN) and the checkpoint to try first.
- ``effect``: how much the LoRA changes the image (strength 0 against strength 1, per seed).
- ``sheets`` / ``chart``: where things go on a contact sheet and a loss plot.

These modules are pure (no pillow, no network, no clock). ``drawing`` (pillow) and ``page`` (the
HTML report) are the adapters that turn their results into files.
"""
