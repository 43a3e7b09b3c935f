"""A check by hand (not a test: it needs torch): kohyawrap's step count with N processes against
accelerate's own sharding of a dataloader built as sd-scripts builds it.

sd-scripts' dataloader has batch_size=1 over a dataset whose every item is a whole bucket batch
(train_network.py @48d368fa). This script prepares such a dataloader for each rank of N
processes with accelerate's ``prepare_data_loader`` (the function ``accelerator.prepare`` uses,
with sd-scripts' defaults: split_batches=False, even_batches=True), counts the batches each rank
really iterates, and compares with ``batches_per_process`` and ``count_training_steps``.

    python3 -m venv /tmp/acc && /tmp/acc/bin/pip install torch accelerate==1.6.0
    /tmp/acc/bin/python scripts/check_multi_gpu_steps.py

(accelerate 1.6.0 is sd-scripts' pin; a CPU build of torch is enough: nothing runs on a GPU.)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from accelerate.data_loader import prepare_data_loader

from kohyawrap.dataset.buckets import (
    TrainingLength,
    batches_per_process,
    count_training_steps,
)


def iterated(batches: int, processes: int) -> int:
    """Batches every rank iterates in one epoch (the same for all ranks, or an error)."""
    counts = set()
    for rank in range(processes):
        loader = torch.utils.data.DataLoader(list(range(batches)), batch_size=1, shuffle=True)
        prepared = prepare_data_loader(
            loader, num_processes=processes, process_index=rank, split_batches=False,
            even_batches=True, put_on_device=False,
        )  # fmt: skip
        counts.add(sum(1 for _ in prepared))
    if len(counts) != 1:
        raise AssertionError(f"ranks differ for {batches} batches over {processes}: {counts}")
    return counts.pop()


def main() -> int:
    mismatches = 0
    cases = 0
    for batches in range(1, 40):
        for processes in (1, 2, 3, 4, 8):
            per = iterated(batches, processes)
            cases += 1
            if per != batches_per_process(batches, processes):
                mismatches += 1
                print(f"batches {batches}, {processes} processes: accelerate {per}")
            for accumulation in (1, 2, 3):
                length = TrainingLength(
                    gradient_accumulation_steps=accumulation, processes=processes
                )
                # train_network.py lines 978-979, on the prepared (per-process) dataloader.
                expected = math.ceil(1600 / math.ceil(per / accumulation))
                if count_training_steps(batches, length).epochs != expected:
                    mismatches += 1
                    print(
                        f"epochs differ: {batches} batches, {processes} x, accumulation {accumulation}"
                    )
    print(
        f"{cases} cases, {mismatches} mismatches (accelerate {__import__('accelerate').__version__})"
    )
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
