"""``kohyawrap reproduce``: a recorded run's configs, rendered again from its manifest alone, and
the request that runs it again."""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path

from kohyawrap import __version__
from kohyawrap.errors import UsageError
from kohyawrap.fileio import atomic_write
from kohyawrap.launcher.manifest import RunManifest
from kohyawrap.launcher.request import TrainRequest
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.models import RenderedRun


def rerender(run: RunDir, manifest: RunManifest, output: Path | None) -> RenderedRun:
    """Render the manifest's spec again and compare with the recorded files, byte for byte."""
    from kohyawrap.render import render_run

    plan = manifest.plan
    if plan.kohyawrap_version != __version__:
        raise UsageError(
            f"run {run.run_id} was rendered by kohyawrap {plan.kohyawrap_version}, this is {__version__}",
            hint=f"install that version to reproduce it exactly: pip install kohyawrap=={plan.kohyawrap_version}",
        )
    from kohyawrap.evaluate.prompts import with_sample_prompts

    rendered = with_sample_prompts(render_run(plan.spec), plan.grid.prompts)
    problems: list[str] = []
    for name, text in sorted(rendered.files.items()):
        recorded = run.config / name
        old = recorded.read_text(encoding="utf-8") if recorded.is_file() else ""
        if old != text:
            problems.extend(
                difflib.unified_diff(
                    old.splitlines(), text.splitlines(), str(recorded), name, lineterm=""
                )
            )
    if problems:
        raise UsageError(
            f"re-rendered configs differ from run {run.run_id}", evidence=problems[:40]
        )
    if output is not None:
        for name, text in sorted(rendered.files.items()):
            atomic_write(output / name, text)
    return rendered


def request_from_manifest(manifest: RunManifest) -> TrainRequest:
    """The TrainRequest that re-runs a recorded run: same spec, base model, dataset, sd-scripts
    commit, price and limits."""
    plan = manifest.plan
    original = replace(
        plan.spec,
        base_model=plan.model.source,
        train_data_dir="dataset",
        output_dir="output",
        logging_dir="logs",
        tokenizer_cache_dir=None,
        reg_data_dir=None,
    )
    commit = manifest.sd_scripts.commit if manifest.sd_scripts else ""
    return TrainRequest(
        spec=original,
        dataset=Path(plan.dataset_root),
        base_model_file=plan.model.filename if plan.model.kind == "hf" else None,
        work_dir=plan.layout.work,
        # The exact commit that ran, even when the original asked for a branch.
        setup=replace(plan.setup, ref=commit or plan.setup.ref),
        money=plan.money,
        pull_state=plan.pull_state,
        force=True,
        grid=plan.grid,
    )
