#!/usr/bin/env python3
"""Run an sd-scripts training script and log every optimizer step's time and the GPU memory peaks.

    KW_STEPLOG=steps.jsonl accelerate launch ... kw_measure.py SDS/sdxl_train_network.py --config_file ...

KW_CAP_GIB=N caps what torch may allocate on the card at N GiB (a smaller card on a larger one).

A global optimizer step hook (torch.optim's register_optimizer_step_post_hook) fires after each
optimizer step, whichever optimizer sd-scripts builds (bitsandbytes' too: it subclasses
torch.optim.Optimizer). It synchronises the GPU first, so the time between two lines is the
whole step: data, forward, backward, optimizer. Nothing in sd-scripts is changed.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from typing import Any


def main() -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    out = open(os.environ.get("KW_STEPLOG", "steps.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
    cuda = torch.cuda.is_available()
    cap = os.environ.get("KW_CAP_GIB")  # act as a smaller card: torch may use at most this much
    if cuda and cap:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(cap) * 2**30 / total))
    start = time.perf_counter()
    count = 0

    def after_step(_optimizer: Any, _args: Any, _kwargs: Any) -> None:
        nonlocal count
        if cuda:
            torch.cuda.synchronize()
        count += 1
        record = {
            "step": count,
            "t": round(time.perf_counter() - start, 4),
            "alloc_gib": round(torch.cuda.memory_allocated() / 2**30, 3) if cuda else 0.0,
            "max_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else 0.0,
            "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3) if cuda else 0.0,
        }
        out.write(json.dumps(record) + "\n")
        out.flush()

    register_optimizer_step_post_hook(after_step)
    script = os.path.abspath(sys.argv[1])
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(script))  # as `python script.py` would: sd-scripts' library/
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
