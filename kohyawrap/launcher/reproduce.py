"""``kohyawrap reproduce``: a recorded run's configs, rendered again from its manifest alone."""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path
from typing import Any

from kohyawrap import __version__
from kohyawrap.errors import UsageError
from kohyawrap.fileio import atomic_write
from kohyawrap.launcher.request import TrainRequest
from kohyawrap.launcher.runplan import SetupOptions, spec_from_json
from kohyawrap.models import RenderedRun
from kohyawrap.runstore import RunDir


def rerender(run: RunDir, manifest: dict[str, Any], output: Path | None) -> RenderedRun:
    """Render the manifest's spec again and compare with the recorded files, byte for byte."""
    from kohyawrap.render import render_run

    plan = manifest["plan"]
    if plan.get("kohyawrap_version") != __version__:
        raise UsageError(
            f"run {run.run_id} was rendered by kohyawrap {plan.get('kohyawrap_version')}, this is {__version__}",
            hint=f"install that version to reproduce it exactly: pip install kohyawrap=={plan.get('kohyawrap_version')}",
        )
    rendered = render_run(spec_from_json(plan["spec"]))
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
            atomic_write(output / name, text.encode())
    return rendered


def request_from_manifest(manifest: dict[str, Any]) -> TrainRequest:
    """The TrainRequest that re-runs a recorded run (same spec, base model, dataset, sd-scripts)."""
    plan = manifest["plan"]
    spec = spec_from_json(plan["spec"])
    original = replace(
        spec,
        base_model=plan["model"]["source"],
        train_data_dir="dataset",
        output_dir="output",
        logging_dir="logs",
        tokenizer_cache_dir=None,
    )
    return TrainRequest(
        spec=original,
        dataset=Path(plan["dataset"]["root"]),
        base_model_file=plan["model"]["filename"] if plan["model"]["kind"] == "hf" else None,
        work_dir=plan["work_dir"],
        # The exact commit that ran, even when the original asked for a branch.
        setup=SetupOptions(
            **{
                **plan["setup"],
                "ref": manifest.get("sd_scripts", {}).get("commit") or plan["setup"]["ref"],
            }
        ),
        on_finish=plan.get("on_finish", "none"),
        pull_state=bool(plan.get("pull_state")),
        max_dollars=plan.get("max_dollars"),
        max_hours=plan.get("max_hours"),
        force=True,
    )
