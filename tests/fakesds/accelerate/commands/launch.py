"""Fake ``accelerate launch`` (``python -m accelerate.commands.launch``) for kohyawrap's tests.

Like accelerate's simple launcher: warns about options left to defaults, runs the training script
in a child process with the same interpreter, and when the child fails raises
``subprocess.CalledProcessError`` (traceback on stderr, exit status 1), as accelerate 1.x does.
Signals are not forwarded: stop the whole process group, as with the real one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="accelerate launch")
    p.add_argument("--config_file", default=None)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--multi_gpu", action="store_true")
    p.add_argument("--num_processes", type=int)
    p.add_argument("--num_machines", type=int)
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16", "fp8"])
    p.add_argument("--dynamo_backend", type=str)
    p.add_argument("--num_cpu_threads_per_process", type=int)
    p.add_argument("--gpu_ids", default=None)
    p.add_argument("--main_process_port", type=int, default=None)
    p.add_argument("--main_process_ip", default=None)
    p.add_argument("--machine_rank", type=int, default=None)
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("training_script")
    p.add_argument("training_script_args", nargs=argparse.REMAINDER)
    return p


def _defaults_warning(args: argparse.Namespace) -> list[str]:
    warned = []
    if args.num_processes is None:
        warned.append("\t`--num_processes` was set to a value of `1`")
        args.num_processes = 1
    if args.num_machines is None:
        warned.append("\t`--num_machines` was set to a value of `1`")
    if args.mixed_precision is None:
        warned.append("\t`--mixed_precision` was set to a value of `'no'`")
        args.mixed_precision = "no"
    if args.dynamo_backend is None:
        warned.append("\t`--dynamo_backend` was set to a value of `'no'`")
    threads = max(1, (os.cpu_count() or 2) // 2)
    if args.num_cpu_threads_per_process is None and args.cpu and threads > 1:
        args.num_cpu_threads_per_process = threads
        warned.append(
            f"\t`--num_cpu_threads_per_process` was set to `{threads}` to improve out-of-box"
            " performance when training on CPUs"
        )
    return warned


def main() -> None:
    """Parse like ``accelerate launch`` and run the script."""
    args = _parser().parse_args()
    warned = _defaults_warning(args)
    if warned:
        lines = [
            "The following values were not passed to `accelerate launch` and had defaults used"
            " instead:",
            *warned,
            "To avoid this warning pass in values for each of the problematic parameters or run"
            " `accelerate config`.",
        ]
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
    env = dict(os.environ)
    env["ACCELERATE_USE_CPU"] = str(args.cpu)
    env["ACCELERATE_MIXED_PRECISION"] = str(args.mixed_precision)
    if args.num_cpu_threads_per_process:
        env["OMP_NUM_THREADS"] = str(args.num_cpu_threads_per_process)
    if args.multi_gpu and (args.num_processes or 1) > 1:
        # The real launcher starts one process per GPU through torch.distributed; the fake runs
        # the main one (rank 0, the only one that prints progress and saves) with the world size
        # the others would share the batches with.
        env.update(WORLD_SIZE=str(args.num_processes), RANK="0", LOCAL_RANK="0")
    # What the launcher saw, for the tests: its arguments and the GPU variables of its
    # environment (there is no GPU here to prove which one it would have used).
    seen = {
        "argv": sys.argv[1:],
        **{
            k: os.environ[k]
            for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
            if k in os.environ
        },
    }
    with open("fake_accelerate_launch.json", "w", encoding="utf-8") as fh:
        json.dump(seen, fh)
    cmd = [sys.executable, args.training_script, *args.training_script_args]
    process = subprocess.Popen(cmd, env=env)
    process.wait()
    if process.returncode != 0:
        if args.quiet:
            sys.exit(1)
        raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)


if __name__ == "__main__":
    main()
