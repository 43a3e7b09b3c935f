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
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.models import RenderedRun
from kohyawrap.models_fetch import BASE_KEY, FetchFile


def rerender(run: RunDir, manifest: RunManifest, output: Path | None) -> RenderedRun:
    """Render the manifest's spec again and compare with the recorded files, byte for byte."""
    from kohyawrap.launcher.request import checkout_dir
    from kohyawrap.render import relaunch, render_run

    plan = manifest.original_plan  # a resumed or retried run is reproduced from its start
    if plan.kohyawrap_version != __version__:
        raise UsageError(
            f"run {run.run_id} was rendered by kohyawrap {plan.kohyawrap_version}, this is {__version__}",
            hint=f"install that version to reproduce it exactly: pip install kohyawrap=={plan.kohyawrap_version}",
        )
    from kohyawrap.evaluate.prompts import with_sample_prompts

    # launch.sh runs the checkout the run used (recorded by SETUP; else the planned one).
    checkout = (
        manifest.sd_scripts.path if manifest.sd_scripts else checkout_dir(plan.setup, plan.layout)
    )
    rendered = with_sample_prompts(relaunch(render_run(plan.spec), checkout), plan.grid.prompts)
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
    """The TrainRequest that re-runs a recorded run: same spec, model files, dataset,
    sd-scripts commit, price and limits."""
    commit = manifest.sd_scripts.commit if manifest.sd_scripts else ""
    return request_from_plan(manifest.original_plan, commit)


def request_from_plan(plan: RunPlan, commit: str = "") -> TrainRequest:
    """The TrainRequest that renders ``plan`` again (the run's paths become the defaults)."""
    base = plan.base_file
    original = replace(
        plan.spec,
        base_model=base.source,
        companions=tuple((f.key, named(f)) for f in plan.model_files if f.key != BASE_KEY),
        train_data_dir="dataset",
        output_dir="output",
        logging_dir="logs",
        tokenizer_cache_dir=None,
        reg_data_dir=None,
    )
    return TrainRequest(
        spec=original,
        dataset=Path(plan.dataset_root),
        base_model_file=base.filename if base.kind == "hf" and base.filename else None,
        work_dir=plan.layout.work,
        # The exact commit that ran, even when the original asked for a branch.
        setup=replace(plan.setup, ref=commit or plan.setup.ref),
        money=plan.money,
        pull_state=plan.pull_state,
        force=True,
        keep_states=0,  # the spec already holds the state options the run had, if any
        grid=plan.grid,
    )


def named(f: FetchFile) -> str:
    """A model file as the user would name it again: ``owner/repo/file``, a URL or a path."""
    return f"{f.source}/{f.filename}" if f.kind == "hf" and f.filename else f.source
