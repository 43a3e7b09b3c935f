"""The host-side watchdog (kohyawrap/hostside/watchdog.py) on a fake clock: limits, graceful
stops right after a save, the safety rule, providers, the idle rule; real files in a run folder,
the real sd-scripts log, real programs standing in for runpodctl and shutdown."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kohyawrap.hostside import watchdog as wd
from kohyawrap.safetensors_header import encode_safetensors
from tests.fixtures.hub import FakeHub

DATA = Path(__file__).parent / "data" / "sdscripts"
T0 = 1_800_000_000.0


def lora_bytes(step: int) -> bytes:
    return encode_safetensors({"w": ("F32", [4], bytes(range(16)))}, {"ss_steps": str(step)})


def frame(step: int, total: int, elapsed: float) -> str:
    mm, ss = divmod(int(elapsed), 60)
    return f"steps:  {100 * step // total:3d}%|####      | {step}/{total} [{mm:02d}:{ss:02d}<00:10,  1.00s/it]"


@dataclass
class Trainer:
    """Stands in for run.sh + sd-scripts on the fake clock: log frames, saves, stop, exit."""

    run: Path
    total: int
    step_seconds: float
    save_every: int
    name: str = "柴犬 lora"
    step: int = 0
    ended: bool = False
    saves: list[tuple[int, float]] = field(default_factory=list)  # (step, time)
    slow_from: int = 0  # from this step on (0: never) a step takes slow_seconds
    slow_seconds: float = 0.0

    def time_of(self, step: int) -> float:
        """When ``step`` ends on the fake clock."""
        slow = max(0, step - self.slow_from) if self.slow_from else 0
        return T0 + step * self.step_seconds + slow * (self.slow_seconds - self.step_seconds)

    def advance(self, now: float) -> None:
        log = self.run / "run.log"
        while not self.ended and self.time_of(self.step + 1) <= now:
            if (self.run / "stop_requested").exists():
                self._end(now, 143)
                return
            self.step += 1
            with log.open("a", encoding="utf-8") as fh:
                fh.write("\r" + frame(self.step, self.total, self.time_of(self.step) - T0))
                if self.step % self.save_every == 0 or self.step == self.total:
                    final = self.step == self.total
                    name = (
                        f"{self.name}.safetensors"
                        if final
                        else (f"{self.name}-{self.step // self.save_every:06d}.safetensors")
                    )
                    fh.write(f"\nsaving checkpoint: output/{name}\n")
                    (self.run / "output" / name).write_bytes(lora_bytes(self.step))
                    self.saves.append((self.step, self.time_of(self.step)))
            if self.step == self.total:
                self._end(now, 0)
        if not self.ended and (self.run / "stop_requested").exists():
            self._end(now, 143)

    def _end(self, now: float, code: int) -> None:
        (self.run / "ended_at").write_text(f"{int(now)}\n")
        (self.run / "exit_code").write_text(f"{code}\n")
        self.ended = True


class FakeClock:
    def __init__(self, trainer: Trainer | None = None) -> None:
        self.t = T0
        self.trainer = trainer

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        if self.trainer is not None:
            self.trainer.advance(self.t)


def make_run(tmp_path: Path, **config: object) -> Path:
    run = tmp_path / "run $(id) 柴犬"
    (run / "watchdog").mkdir(parents=True)
    (run / "output").mkdir()
    (run / "started_at").write_text(f"{int(T0)}\n")
    (run / "watchdog" / "config.json").write_text(json.dumps(config))
    return run


def simulate(
    tmp_path: Path, trainer_args: dict[str, float], **config: object
) -> tuple[Trainer, Path]:
    run = make_run(tmp_path, **config)
    trainer = Trainer(run, **trainer_args)  # type: ignore[arg-type]
    assert wd.watch(run, FakeClock(trainer)) == 0
    return trainer, run


# ---------------------------------------------------------------------------------------------
# Reading sd-scripts' log


def test_log_reader_follows_the_real_sd_scripts_log_in_any_chunks() -> None:
    raw = (DATA / "sample_run_stdout.log").read_bytes()
    whole = wd.LogReader(Path("unused"))
    whole.feed(raw.decode("utf-8"))
    pieces = wd.LogReader(Path("unused"))
    decoder = pieces.decoder
    for i in range(0, len(raw), 997):  # cuts through multibyte characters and frames
        pieces.feed(decoder.decode(raw[i : i + 997]))
    assert pieces.announced == whole.announced
    assert [name for name, _ in whole.announced] == ["demo-000001.safetensors", "demo.safetensors"]
    assert whole.progress is not None and pieces.progress == whole.progress
    assert (whole.progress.step, whole.progress.total) == (80, 80)
    # 07:03 for 80 steps, as tqdm printed it.
    assert whole.progress.seconds_per_step == pytest.approx(423 / 80)
    # The epoch save came at the end of epoch 1 (of 2): step 40 of 80.
    assert dict(whole.announced)["demo-000001.safetensors"] == 40


def test_a_checkpoint_is_complete_only_when_every_byte_is_there(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    data = lora_bytes(3)
    path.write_bytes(data[:-5])
    assert not wd.complete(path, last_size=None)
    path.write_bytes(data)
    assert wd.complete(path, last_size=None)
    other = tmp_path / "x.ckpt"
    other.write_bytes(b"1234")
    assert not wd.complete(other, last_size=None) and wd.complete(other, last_size=4)


# ---------------------------------------------------------------------------------------------
# Limits on a fake clock


def test_budget_stop_comes_right_after_a_save_when_the_next_would_not_fit(tmp_path: Path) -> None:
    price, before, poll, budget = 36.0, 0.05, 2.0, 0.355
    trainer, run = simulate(
        tmp_path,
        {"total": 100, "step_seconds": 1.0, "save_every": 10},
        price_per_hour=price, spent_before_launch=before, max_dollars=budget, poll_seconds=poll,
    )  # fmt: skip
    stop = json.loads((run / "watchdog" / "stop.json").read_text())
    assert stop["reason"] == "budget" and stop["graceful"] is True
    last_step, _ = trainer.saves[-1]
    assert stop["after"] == f"{trainer.name}-{last_step // 10:06d}.safetensors"
    assert stop["spent"] <= budget
    # The rule it applied: the next save (one interval later, at the pace seen with the margin)
    # plus a look would pass the budget.
    at = float(stop["at"])
    step_then = int(at - T0)
    next_save = at + (last_step + 10 - step_then) * 1.0 * wd.PACE_MARGIN + poll
    assert before + price * (next_save - T0) / 3600 > budget
    # ... and one interval earlier it would not have stopped: not a save too soon.
    assert before + price * (next_save - 10 * wd.PACE_MARGIN - T0) / 3600 <= budget
    assert (run / "exit_code").read_text().strip() == "143"
    assert not (run / "deadline").exists()
    assert "nothing trained is lost" in stop["message"]


def test_a_trainer_that_slows_down_is_still_stopped_right_after_a_save(tmp_path: Path) -> None:
    """tqdm's rate is an average: after a slowdown it promises the next save too early. The pace
    between the last two saves does not, so the stop still loses nothing."""
    # $0.01 a second: the budget is 93.5 s. Saves come at 40, 58, 76, 94 s; at 76 s the average
    # rate (1.27 s a step) promised the next at ~89 s, and it would have come at 94.
    price, poll, budget = 36.0, 1.0, 0.935
    trainer, run = simulate(
        tmp_path,
        {"total": 400, "step_seconds": 1.0, "save_every": 10, "slow_from": 40,
         "slow_seconds": 1.8},
        price_per_hour=price, max_dollars=budget, poll_seconds=poll,
    )  # fmt: skip
    stop = json.loads((run / "watchdog" / "stop.json").read_text())
    assert stop["reason"] == "budget" and stop["graceful"] is True, stop
    last_step, saved_at = trainer.saves[-1]
    assert stop["after"] == f"{trainer.name}-{last_step // 10:06d}.safetensors"
    # It kept going while a save fitted: the next one would have come after the budget.
    assert saved_at + 10 * 1.8 > T0 + budget / price * 3600 - poll


def test_without_saves_the_budget_is_never_passed_by_more_than_a_look(tmp_path: Path) -> None:
    price, poll, budget = 72.0, 3.0, 0.5  # $0.02/s
    _, run = simulate(
        tmp_path,
        {"total": 1000, "step_seconds": 1.0, "save_every": 10_000},
        price_per_hour=price, max_dollars=budget, poll_seconds=poll,
    )  # fmt: skip
    stop = json.loads((run / "watchdog" / "stop.json").read_text())
    assert stop["reason"] == "budget" and stop["graceful"] is False
    look_cost = price * poll / 3600
    assert budget - look_cost <= stop["spent"] <= budget
    ended = float((run / "ended_at").read_text())
    assert price * (ended - T0) / 3600 <= budget + look_cost


def test_deadline_holds_on_the_host_and_is_recorded_as_such(tmp_path: Path) -> None:
    _, run = simulate(
        tmp_path,
        {"total": 1000, "step_seconds": 1.0, "save_every": 10_000},
        max_hours=0.01, poll_seconds=2.0,
    )  # fmt: skip
    stop = json.loads((run / "watchdog" / "stop.json").read_text())
    assert stop["reason"] == "deadline" and not stop["graceful"]
    assert float((run / "ended_at").read_text()) - T0 <= 0.01 * 3600
    assert (run / "deadline").read_text().strip() == "36"


def test_a_run_that_fits_is_never_stopped(tmp_path: Path) -> None:
    trainer, run = simulate(
        tmp_path,
        {"total": 30, "step_seconds": 1.0, "save_every": 10},
        price_per_hour=36.0, max_dollars=1.0, max_hours=1.0, poll_seconds=2.0,
    )  # fmt: skip
    assert not (run / "watchdog" / "stop.json").exists()
    assert (run / "exit_code").read_text().strip() == "0"
    state = json.loads((run / "watchdog" / "state.json").read_text())
    assert state["saved"][-1] == f"{trainer.name}-000002.safetensors"


# ---------------------------------------------------------------------------------------------
# The safety rule


def test_safety_needs_a_matching_receipt_or_the_hub(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    paths = wd.Paths(run)
    names = ["a.safetensors", "b.safetensors", "c.safetensors", "d.safetensors"]
    for i, name in enumerate(names):
        (run / "output" / name).write_bytes(lora_bytes(i))
    (run / "output" / "notes.txt").write_text("not a checkpoint")
    (run / "receipts").mkdir()
    digest = {n: wd.file_sha256(run / "output" / n) for n in names}
    (run / "receipts" / "a.safetensors.sha256").write_text(f"{digest['a.safetensors']}  a\n")
    (run / "receipts" / "b.safetensors.sha256").write_text("0" * 64 + "\n")  # a different file
    wd.write_json(paths.hub, {"files": {"c.safetensors": digest["c.safetensors"]}})
    safety = wd.check_safety(paths)
    assert safety.by_receipt == ("a.safetensors",) and safety.on_hub == ("c.safetensors",)
    assert [m.split()[0] for m in safety.missing] == ["b.safetensors", "d.safetensors"]
    assert "changed since" in safety.missing[0] and not safety.safe
    (run / "receipts" / "d.safetensors.sha256").write_text(digest["d.safetensors"])
    (run / "receipts" / "b.safetensors.sha256").write_text(digest["b.safetensors"])
    assert wd.check_safety(paths).safe


RUNPOD = wd.Provider("runpod", "pod-7")
VAST = wd.Provider("vast", "4242")
NONE = wd.Provider("none", "")
SAFE = wd.Safety(("a",), (), ())
UNSAFE = wd.Safety((), (), ("b.safetensors (not verified on a laptop or the Hub)",))


@pytest.mark.parametrize(
    ("asked", "provider", "safety", "action"),
    [
        ("destroy", RUNPOD, SAFE, "destroy"),
        ("destroy", RUNPOD, UNSAFE, "stop"),  # never destroy with a checkpoint missing
        ("destroy", VAST, UNSAFE, "stop"),
        ("destroy", NONE, SAFE, ""),
        ("stop", VAST, UNSAFE, "stop"),  # a stopped host keeps its disk: allowed
        ("stop", NONE, SAFE, ""),
        ("shutdown", NONE, UNSAFE, "shutdown"),
        ("shutdown", RUNPOD, SAFE, "stop"),  # a container cannot power the machine off
        ("touch done", NONE, SAFE, "command"),
        ("rm -rf ~", NONE, UNSAFE, ""),  # a command may destroy: it needs the LoRA safe
        ("destroy", wd.Provider("runpod", ""), SAFE, ""),
        ("none", RUNPOD, UNSAFE, "none"),
    ],
)
def test_finish_choices_follow_the_safety_rule(
    asked: str, provider: wd.Provider, safety: wd.Safety, action: str
) -> None:
    choice = wd.choose(asked, provider, safety)
    assert choice.action == action, choice.message
    if asked == "destroy" and not safety.safe and action == "stop":
        assert "destroy refused" in choice.message and "b.safetensors" in choice.message


def test_provider_environment_is_read_where_each_provider_keeps_it(tmp_path: Path) -> None:
    rp = tmp_path / "rp_environment"
    rp.write_text("export RUNPOD_POD_ID=\"pod-9x\"\nexport RUNPOD_API_KEY='k'\nexport PATH=/x\n")
    init = tmp_path / "environ"
    init.write_bytes(b"CONTAINER_ID=4242\0CONTAINER_API_KEY=vast-key\0HOME=/root\0")
    env = wd.provider_environment({}, rp, init)
    assert env == {
        "RUNPOD_POD_ID": "pod-9x",
        "RUNPOD_API_KEY": "k",
        "CONTAINER_ID": "4242",
        "CONTAINER_API_KEY": "vast-key",
    }
    assert wd.detect_provider("auto", env) == wd.Provider("runpod", "pod-9x")
    assert wd.detect_provider("vast", env) == wd.Provider("vast", "4242")
    vast_only = wd.provider_environment({}, tmp_path / "none", init)
    assert wd.detect_provider("auto", vast_only) == wd.Provider("vast", "4242")
    assert wd.detect_provider("auto", {"CONTAINER_ID": "1"}) == NONE  # no key: not Vast
    assert wd.detect_provider("none", env) == NONE


# ---------------------------------------------------------------------------------------------
# The idle rule, with real stand-ins for the provider's programs


def fake_program(folder: Path, name: str, record: Path) -> None:
    """A program that appends its arguments (and a provider variable) to ``record``."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(
        "#!/bin/sh\n"
        f'printf "%s %s | %s\\n" "$(basename "$0")" "$*" "${{RUNPOD_API_KEY:-}}" >> "{record}"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def provider_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    record = tmp_path / "calls.txt"
    for name in ("runpodctl", "shutdown"):
        fake_program(tmp_path / "bin", name, record)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return record


def ended_run(tmp_path: Path, ended_ago: float, **config: object) -> tuple[Path, FakeClock]:
    run = make_run(tmp_path, **config)
    (run / "output" / "demo-000001.safetensors").write_bytes(lora_bytes(1))
    (run / "output" / "demo.safetensors").write_bytes(lora_bytes(2))
    (run / "exit_code").write_text("0\n")
    clock = FakeClock()
    clock.t = T0 + 100
    (run / "ended_at").write_text(f"{int(clock.t - ended_ago)}\n")
    return run, clock


def test_idle_rule_stops_instead_of_destroying_when_a_checkpoint_is_not_safe(
    tmp_path: Path, provider_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNPOD_POD_ID", "pod-7")
    run, clock = ended_run(tmp_path, 0, on_finish="destroy", idle_minutes=1.0, poll_seconds=5.0)
    digest = wd.file_sha256(run / "output" / "demo-000001.safetensors")
    (run / "receipts").mkdir()
    (run / "receipts" / "demo-000001.safetensors.sha256").write_text(digest)
    assert wd.watch(run, clock) == 0
    assert clock.t - (T0 + 100) >= 60, "it waited the idle minutes"
    finish = json.loads((run / "watchdog" / "finish.json").read_text())
    assert finish["by"] == "watchdog" and finish["action"] == "stop" and finish["result"] == "ok"
    assert finish["missing"] == ["demo.safetensors (not verified on a laptop or the Hub)"]
    assert provider_bin.read_text().splitlines() == ["runpodctl stop pod pod-7 | "]


def test_idle_rule_destroys_once_every_checkpoint_has_a_receipt(
    tmp_path: Path, provider_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNPOD_POD_ID", "pod-7")
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-key")
    run, clock = ended_run(tmp_path, 0, on_finish="destroy", idle_minutes=1.0, poll_seconds=5.0)
    (run / "receipts").mkdir()
    for path in (run / "output").iterdir():
        (run / "receipts" / f"{path.name}.sha256").write_text(wd.file_sha256(path) + "  x\n")
    assert wd.watch(run, clock) == 0
    finish = json.loads((run / "watchdog" / "finish.json").read_text())
    assert finish["action"] == "destroy" and finish["safe"] is True
    assert provider_bin.read_text().splitlines() == ["runpodctl remove pod pod-7 | rp-key"]


def test_a_laptop_that_keeps_acknowledging_keeps_the_host_waiting(
    tmp_path: Path, provider_bin: Path
) -> None:
    run, clock = ended_run(tmp_path, 0, on_finish="shutdown", idle_minutes=1.0, poll_seconds=5.0)
    guard = wd.Guard(wd.Paths(run), wd.Config.load(run / "watchdog" / "config.json"), clock)
    (run / "receipts").mkdir()
    for _ in range(30):  # 150 s of looks, a receipt every 25 s
        if int(clock.t) % 25 == 0:
            receipt = run / "receipts" / "demo.safetensors.sha256"
            receipt.write_text("x")
            os.utime(receipt, (clock.t, clock.t))
        assert guard.look() is False
        clock.sleep(5.0)
    assert not provider_bin.exists()
    clock.sleep(60.0)
    assert guard.look() is True
    assert provider_bin.read_text().splitlines() == ["shutdown -h now | "]


def test_finish_decides_once_whoever_asks(tmp_path: Path, provider_bin: Path) -> None:
    run, clock = ended_run(tmp_path, 0, on_finish="shutdown")
    paths, cfg = wd.Paths(run), wd.Config.load(run / "watchdog" / "config.json")
    first = wd.decide(paths, cfg, "laptop", "a laptop verified every checkpoint", clock)
    second = wd.decide(paths, cfg, "watchdog", "idle", clock)
    assert first == second and first["by"] == "laptop" and first["result"] == "pending"
    assert wd.act(paths, cfg)["result"] == "ok"
    assert wd.act(paths, cfg)["result"] == "ok"
    assert provider_bin.read_text().splitlines() == ["shutdown -h now | "], "carried out once"


def test_the_host_program_needs_only_the_standard_library() -> None:
    source = Path(wd.__file__).read_text(encoding="utf-8")
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    assert found - set(sys.stdlib_module_names) == {"huggingface_hub"}


# ---------------------------------------------------------------------------------------------
# The Hub: push, compare the Hub's sha256, then the safety rule counts it


def run_finish(run: Path, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, wd.__file__, "finish", str(run), "--decide", "--by", "laptop"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("KW finish="))
    return json.loads(line.removeprefix("KW finish="))


@pytest.fixture
def hub_env(fake_hub: FakeHub) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "RUNPOD_"))}
    env.update(HF_ENDPOINT=fake_hub.url, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
    return env


def test_push_to_hub_makes_destroy_safe_and_removes_the_token(
    tmp_path: Path, fake_hub: FakeHub, hub_env: dict[str, str]
) -> None:
    token = "hf_" + "PushT0kenXyz" * 3
    run, _ = ended_run(tmp_path, 0)
    (run / "watchdog" / "config.json").write_text(
        json.dumps({"on_finish": "destroy", "push_to_hub": "me/shiba-lora", "run_id": "r1"})
    )
    (run / "watchdog" / "hf_token").write_text(token)
    (run / "watchdog" / "hf_token").chmod(0o600)
    record = run_finish(run, {**hub_env, "RUNPOD_POD_ID": "pod-3"})
    assert record["action"] == "destroy" and record["safe"] is True, record
    assert "2 verified on the Hugging Face Hub" in str(record["safe_by"])
    created = fake_hub.repos["me/shiba-lora"]
    assert created.get("visibility") == "private" or created.get("private") is True
    for name in ("demo.safetensors", "demo-000001.safetensors"):
        assert fake_hub.files[f"me/shiba-lora/{name}"] == (run / "output" / name).read_bytes()
    assert f"Bearer {token}" in fake_hub.auth_seen
    assert not (run / "watchdog" / "hf_token").exists(), "the token is deleted after the push"
    for path in run.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_a_hub_whose_hash_differs_does_not_count(
    tmp_path: Path, fake_hub: FakeHub, hub_env: dict[str, str]
) -> None:
    run, _ = ended_run(tmp_path, 0)
    (run / "watchdog" / "config.json").write_text(
        json.dumps({"on_finish": "destroy", "push_to_hub": "me/lora"})
    )
    (run / "watchdog" / "hf_token").write_text("hf_x")
    fake_hub.lie_about.add("me/lora/demo.safetensors")
    record = run_finish(run, {**hub_env, "RUNPOD_POD_ID": "pod-3"})
    assert record["action"] == "stop", "destroy refused: the Hub does not hold the same bytes"
    assert record["missing"] == ["demo.safetensors (not verified on a laptop or the Hub)"]
    hub = json.loads((run / "watchdog" / "hub.json").read_text())
    assert list(hub["files"]) == ["demo-000001.safetensors"]


def test_with_save_state_a_save_is_complete_once_its_state_folder_settles(tmp_path: Path) -> None:
    output = tmp_path / "output"
    state = output / "柴犬-000001-state"
    state.mkdir(parents=True)
    (output / "柴犬-000001.safetensors").write_bytes(lora_bytes(1))
    saves = wd.Saves(output, save_state=True)
    announced = [("柴犬-000001.safetensors", 10)]
    assert not saves.update(announced), "no train_state.json yet"
    (state / "train_state.json").write_text('{"current_step": 10}')
    assert not saves.update(announced), "accelerate may still be writing"
    (state / "optimizer.bin").write_bytes(b"\0" * 100)
    assert not saves.update(announced), "it grew since the last look"
    assert saves.update(announced) and saves.done == announced
    assert not saves.update(announced), "reported once"
