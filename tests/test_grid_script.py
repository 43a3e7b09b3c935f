"""The host-side grid wrapper (templates/remote/grid.sh.j2) run for real with bash, over the fake
sd-scripts' gen_img.py: images renamed in line order, a status per call, exit codes, a stop, the
host's own deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from kohyawrap.evaluate.gridplan import build_grid, checkpoint_of, generation_args
from kohyawrap.evaluate.options import parse_grid
from kohyawrap.evaluate.prompts import PromptDefaults
from kohyawrap.launcher.scripts import render_script
from kohyawrap.safetensors_header import write_safetensors
from tests.fixtures.fakesds import FakeBehaviour, FakeSdScripts

F32 = "F32"


def lora_file(path: Path, up: float) -> None:
    """A tiny LoRA whose up-weights are ``up`` (0: it changes nothing)."""
    import struct

    values = struct.pack("<16f", *([up] * 16))
    write_safetensors(
        path,
        {
            "lora_unet_x.alpha": (F32, [], struct.pack("<f", 1.0)),
            "lora_unet_x.lora_down.weight": (F32, [4, 4], struct.pack("<16f", *([0.1] * 16))),
            "lora_unet_x.lora_up.weight": (F32, [4, 4], values),
        },
        {"ss_epoch": "1", "ss_steps": "10"},
    )


class GridWorld:
    """A run folder with two LoRAs, a fake sd-scripts clone, and a grid's prompt files."""

    def __init__(
        self, tmp_path: Path, fake: FakeSdScripts, behaviour: FakeBehaviour | None
    ) -> None:
        commit = fake.commit_behaviour(behaviour) if behaviour else None
        self.sds = fake.clone(tmp_path / "sd scripts $(x)", commit)
        self.run_dir = tmp_path / "run 柴犬"
        (self.run_dir / "output").mkdir(parents=True)
        lora_file(self.run_dir / "output" / "demo-000001.safetensors", 0.01)
        lora_file(self.run_dir / "output" / "demo.safetensors", 0.02)
        model = tmp_path / "base.safetensors"
        model.write_bytes(b"\x00" * 64)
        found = [
            checkpoint_of(f"output/{n}", f"checkpoints/{n}", "demo", {"ss_epoch": e, "ss_steps": s})
            for n, e, s in (("demo-000001.safetensors", "1", "10"), ("demo.safetensors", "2", "20"))
        ]
        self.plan = build_grid([c for c in found if c], parse_grid("strengths=0,0.5,1,seeds=2"),
                               ("一只 sks dog", "sks dog 'quoted' $(touch pwned)"),
                               PromptDefaults("blurry", 256, 256, 20, 7.0))  # fmt: skip
        self.grid = self.run_dir / "grid" / "01"
        self.calls = []
        for call in self.plan.calls:
            for folder, lines in (("prompts", call.lines), ("names", call.names)):
                (self.grid / folder).mkdir(parents=True, exist_ok=True)
                text = "\n".join(lines) + "\n"
                (self.grid / folder / f"{call.key}.txt").write_text(text, encoding="utf-8")
            args = generation_args(
                training_script="train_network.py", sd_scripts=str(self.sds), model=str(model),
                lora=str(self.run_dir / call.checkpoint.rel) if call.checkpoint else None,
                prompt_file=str(self.grid / "prompts" / f"{call.key}.txt"),
                outdir=str(self.grid / "raw" / call.key),
                settings={"network_module": "networks.lora"}, batch_size=2, tokenizer_cache_dir=None,
            )  # fmt: skip
            self.calls.append({"key": call.key, "args": [sys.executable, *args]})

    def write(self, max_seconds: int = 0) -> None:
        script = render_script(
            "grid", grid_dir=str(self.grid), run_dir=str(self.run_dir), sds=str(self.sds),
            hf_home=str(self.grid / "hf"), max_seconds=max_seconds, calls=self.calls,
        )  # fmt: skip
        (self.grid / "run.sh").write_text(script)


def test_every_image_is_drawn_and_renamed_in_line_order(
    tmp_path: Path, fake_sdscripts: FakeSdScripts
) -> None:
    world = GridWorld(tmp_path, fake_sdscripts, None)
    world.write()
    grid, plan = world.grid, world.plan
    done = subprocess.run(["bash", "run.sh"], cwd=grid, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (grid / "exit_code").read_text().strip() == "0"
    assert {p.name: p.read_text().strip() for p in (grid / "status").iterdir()} == {
        "base": "0", "e000001": "0", "final": "0"
    }  # fmt: skip
    names = sorted(p.name for p in (grid / "images").iterdir())
    assert names == sorted(c.name for c in plan.cells)
    assert not list((grid / "raw").rglob("*.png")), "every image was renamed"
    for cell in plan.cells:
        with Image.open(grid / "images" / cell.name) as image:
            # The text the generation wrote into the PNG says which line made it.
            assert image.info["seed"] == str(cell.seed)
            assert image.info["prompt"] == plan.prompts[cell.prompt].encode(
                "latin-1", "replace"
            ).decode("latin-1")
    log = (grid / "grid.log").read_text()
    assert "KW done=final code=0" in log and "network mul: [0.5]" in log
    assert not list(tmp_path.rglob("pwned")) and not (grid / "pwned").exists()


def test_a_failing_call_is_recorded_and_the_others_still_run(
    tmp_path: Path, fake_sdscripts: FakeSdScripts
) -> None:
    world = GridWorld(tmp_path, fake_sdscripts, FakeBehaviour(gen_fail="oom", gen_fail_at=3))
    world.write()
    grid, plan = world.grid, world.plan
    subprocess.run(["bash", "run.sh"], cwd=grid, capture_output=True, timeout=120)
    codes = {p.name: int(p.read_text()) for p in (grid / "status").iterdir()}
    assert codes["base"] != 0 and codes["e000001"] != 0 and codes["final"] != 0
    assert int((grid / "exit_code").read_text()) != 0
    # Images made before the failure of each call are kept (two per call here).
    assert len(list((grid / "images").iterdir())) == 2 * len(plan.calls)
    assert "OutOfMemoryError" in (grid / "grid.log").read_text()


def _detached(grid: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["bash", "run.sh"], cwd=grid, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def _wait(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_stop_ends_the_current_call_and_skips_the_rest(
    tmp_path: Path, fake_sdscripts: FakeSdScripts
) -> None:
    world = GridWorld(tmp_path, fake_sdscripts, FakeBehaviour(gen_seconds=0.5))
    world.write()
    grid = world.grid
    proc = _detached(grid)
    _wait(grid / "raw" / "base" / "im_000001.png")
    os.kill(int((grid / "run.pid").read_text()), signal.SIGTERM)
    proc.wait(timeout=60)
    assert (grid / "exit_code").read_text().strip() == "143"
    assert not (grid / "status" / "final").exists(), "the calls after the stop did not run"


def test_the_hosts_own_deadline_stops_the_grid(
    tmp_path: Path, fake_sdscripts: FakeSdScripts
) -> None:
    world = GridWorld(tmp_path, fake_sdscripts, FakeBehaviour(gen_seconds=0.5))
    world.write(max_seconds=1)
    _detached(world.grid).wait(timeout=60)
    assert (world.grid / "deadline").read_text().strip() == "1"
    assert (world.grid / "exit_code").read_text().strip() == "143"
    assert not (world.grid / "status" / "final").exists()


@pytest.fixture(autouse=True)
def _fake_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)
