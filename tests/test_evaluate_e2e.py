"""Is the LoRA any good, end to end through the CLI: `train` draws the grid on the host (the fake
sd-scripts' gen_img.py writes real PNGs), pulls samples and images verified, writes the report;
`grid`, `loss`, `report` and `export` on recorded runs; a LoRA that changes nothing; a grid that
fails, runs out of budget, loses its connection or its laptop."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image, ImageStat

from kohyawrap.evaluate.page import external_references
from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.manifest import RunManifest, RunStatus
from tests.fixtures.fakesds import FakeBehaviour, FakeSdScripts
from tests.fixtures.images import write_jpeg, write_png
from tests.fixtures.runs import HOSTILE, Env, kohyawrap, manifest_of, only_run, ssh_args
from tests.fixtures.sshd import Sshd, TcpRelay

pytestmark = pytest.mark.slow
NAME = "柴犬 lora"
# The default grid of a 2-epoch run saved every epoch: 2 checkpoints x 4 strengths above 0 x
# 5 seeds x 2 prompts, and the base model's 5 x 2.
DEFAULT_IMAGES = 2 * 4 * 5 * 2 + 5 * 2


def make_world(root: Path) -> Env:
    concept = root / "data" / HOSTILE
    concept.mkdir(parents=True)
    for i in range(3):
        write_jpeg(concept / f"photo {i}.jpg", size=(96, 64), seed=i)
        (concept / f"photo {i}.txt").write_text(f"sks dog, photo {i}\n")
    write_png(concept / "it's $(id).png", size=(64, 96), seed=7)
    (concept / "it's $(id).txt").write_text("a png\n")
    base = root / "base model.safetensors"
    base.write_bytes(b"\x00" * 4096)
    home = root / "home"
    home.mkdir()
    return Env(root, home, root / "data", base, root / "work dir", root / "runs")


def args_for(env: Env, fake: FakeSdScripts, commit: str, *extra: str, model: str = "sd15",
             target: str = "local", epochs: int = 2) -> list[str]:  # fmt: skip
    return [
        "train", "--host", target, "--gpu", "rtx4090", "--model", model,
        "--dataset", str(env.dataset), "--base-model", str(env.base_model), "--name", NAME,
        "--sd-scripts-repo", fake.url, "--sd-scripts-ref", commit, "--torch-spec", "skip",
        "--work-dir", str(env.work), "--runs-dir", str(env.runs), "--yes", "--poll", "0.2",
        "--force", "--set", f"max_train_epochs={epochs}", "--set", "save_every_n_epochs=1",
        "--set", "sample_every_n_epochs=1", "--set", "train_batch_size=1", *extra,
    ]  # fmt: skip


def cli(env: Env, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return kohyawrap(env, *args, timeout=timeout)


def assert_grid_pulled(run: Path, m: RunManifest) -> None:
    """Every grid image the record counts is here, verified, and a real PNG."""
    grid = m.grid
    assert grid is not None
    images = [rel for rel in m.pulled if rel.startswith(f"grid/{grid.grid_id}/images/")]
    assert len(images) == grid.pulled
    for rel in images:
        local = run / m.pulled[rel].path
        assert file_sha256(local) == m.pulled[rel].sha256
        with Image.open(local) as image:
            assert image.format == "PNG"


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, fake_sdscripts: FakeSdScripts
) -> tuple[Env, Path, str]:
    """One run trained with the default grid, shared by the read-only tests below."""
    env = make_world(tmp_path_factory.mktemp("eval") / "world $(touch pwned)")
    result = cli(env, *args_for(env, fake_sdscripts, fake_sdscripts.head))
    assert result.returncode == 0, result.stderr
    return env, only_run(env), result.stderr


def test_train_draws_the_grid_pulls_samples_and_writes_the_report(
    trained: tuple[Env, Path, str],
) -> None:
    env, run, stderr = trained
    m = manifest_of(run)
    assert m.status is RunStatus.FINISHED
    grid = m.grid
    assert grid is not None and grid.status == "done", grid
    assert grid.in_run and grid.images == DEFAULT_IMAGES == grid.pulled
    assert grid.done == ("base", "e000001", "final")
    assert [c.label for c in grid.checkpoints] == ["epoch 1", "epoch 2 (last)"]
    assert grid.prompts == ("a photo of sks \"dog\" $(touch pwned) 'x'",
                            "sks \"dog\" $(touch pwned) 'x', outdoors, natural light")  # fmt: skip
    assert_grid_pulled(run, m)
    assert "grid" in m.timings and grid.seconds is not None and grid.dollars is not None
    # The samples sd-scripts drew at each epoch's end came back, verified.
    samples = sorted(p.name for p in (run / "samples").iterdir())
    prompts = (run / "config" / "sample_prompts.txt").read_text(encoding="utf-8").splitlines()
    per_epoch = len([line for line in prompts if line.strip() and not line.startswith("#")])
    assert per_epoch >= 2
    assert len(samples) == 2 * per_epoch  # two epochs
    assert all(n.startswith(f"{NAME}_e00000") for n in samples)
    assert all(
        m.pulled[f"output/sample/{n}"].sha256 == file_sha256(run / "samples" / n) for n in samples
    )
    # The report is written at the end and its path printed.
    index = run / "report" / "index.html"
    assert index.is_file()
    assert str(index) in " ".join(stderr.split())
    html = index.read_text(encoding="utf-8")
    assert external_references(html) == []
    assert "Try first" in html and NAME in html
    assert len(list((run / "report" / "sheets").glob("*.png"))) == 2 * 5
    assert not list(env.root.rglob("pwned"))


def test_report_json_says_which_file_and_the_lora_has_an_effect(
    trained: tuple[Env, Path, str],
) -> None:
    env, run, _ = trained
    result = cli(env, "report", run.name, "--runs-dir", str(env.runs), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["try_first"] == f"checkpoints/{NAME}.safetensors"
    assert data["effect"]["finding"] is None
    rows = data["effect"]["rows"]
    assert [r["label"] for r in rows] == ["epoch 1", "epoch 2 (last)"]
    assert all(r["mean"] > 0.05 for r in rows), rows


def test_loss_prints_a_chart_writes_a_plot_and_a_verdict(trained: tuple[Env, Path, str]) -> None:
    env, run, _ = trained
    png = env.root / "plots" / "loss.png"
    png.parent.mkdir()
    result = cli(env, "loss", run.name[:20], "--runs-dir", str(env.runs), "--png", str(png))
    assert result.returncode == 0, result.stderr
    assert "┤" in result.stdout and "loss/current" in result.stdout
    with Image.open(png) as plot:
        assert plot.size == (960, 460)
    data = json.loads(cli(env, "loss", run.name, "--runs-dir", str(env.runs), "--json").stdout)
    assert data["kind"] in (
        "converged",
        "still_falling",
        "flat",
        "too_short",
        "rising",
        "overfitting",
    )
    assert data["steps"] == manifest_of(run).follow.total_steps


def test_export_copies_the_chosen_lora_verified_and_never_overwrites(
    trained: tuple[Env, Path, str],
) -> None:
    env, run, _ = trained
    webui = env.root / "webui models" / "Lora"
    webui.mkdir(parents=True)
    first = cli(env, "export", run.name, "--to", str(webui), "--runs-dir", str(env.runs), "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    target = Path(data["target"])
    assert target == webui / f"{NAME}-epoch02.safetensors"
    assert (
        file_sha256(target)
        == data["sha256"]
        == manifest_of(run).pulled[f"output/{NAME}.safetensors"].sha256
    )
    again = cli(env, "export", run.name, "--to", str(webui), "--runs-dir", str(env.runs), "--json")
    assert json.loads(again.stdout)["already_there"] is True
    (webui / f"{NAME}-epoch01.safetensors").write_bytes(b"someone else's file")
    clash = cli(
        env, "export", run.name, "--to", str(webui), "--epoch", "1", "--runs-dir", str(env.runs)
    )
    assert clash.returncode == 2 and "not overwritten" in clash.stderr
    assert (webui / f"{NAME}-epoch01.safetensors").read_bytes() == b"someone else's file"
    named = cli(env, "export", run.name, "--to", str(webui), "--epoch", "1", "--name", "mine",
                "--runs-dir", str(env.runs))  # fmt: skip
    assert named.returncode == 0 and (webui / "mine.safetensors").is_file()
    for bad in ("../escape", "a/b"):
        refused = cli(
            env, "export", run.name, "--to", str(webui), "--name", bad, "--runs-dir", str(env.runs)
        )
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
    missing = cli(
        env, "export", run.name, "--to", str(webui), "--epoch", "7", "--runs-dir", str(env.runs)
    )
    assert missing.returncode == 2 and "epoch 7" in missing.stderr


def test_a_lora_that_changes_nothing_is_reported(
    tmp_path: Path, fake_sdscripts: FakeSdScripts
) -> None:
    env = make_world(tmp_path / "w")
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(lora_effect=0.0))
    result = cli(env, *args_for(env, fake_sdscripts, commit, "--grid", "seeds=2,strengths=0,1"))
    assert result.returncode == 0, result.stderr
    run = only_run(env)
    data = json.loads(cli(env, "report", run.name, "--runs-dir", str(env.runs), "--json").stdout)
    assert "barely changes the image" in data["headline"]
    effect = data["effect"]
    assert all(r["mean"] == 0 for r in effect["rows"])
    # The dataset's captions mostly lack the trigger: the report says so.
    assert any("captions contain the trigger" in r for r in effect["remedies"]), effect["remedies"]
    html = (run / "report" / "index.html").read_text(encoding="utf-8")
    assert "barely changes the image" in html


def test_a_failing_grid_does_not_fail_the_run_and_the_finish_action_runs(
    tmp_path: Path, fake_sdscripts: FakeSdScripts
) -> None:
    env = make_world(tmp_path / "w")
    marker = env.root / "finished marker"
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(gen_fail="oom", gen_fail_at=4))
    result = cli(env, *args_for(env, fake_sdscripts, commit, "--grid", "seeds=2"),
                 "--on-finish", f"touch {str(marker)!r}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    m = manifest_of(only_run(env))
    assert m.status is RunStatus.FINISHED
    assert m.grid is not None and m.grid.status == "partial", m.grid
    assert "OutOfMemoryError" in m.grid.reason and m.grid.failed
    assert marker.exists(), "the finish action ran after the failed grid"
    assert (only_run(env) / "report" / "index.html").is_file()


def test_a_grid_that_would_pass_the_budget_is_skipped(
    tmp_path: Path, fake_sdscripts: FakeSdScripts
) -> None:
    env = make_world(tmp_path / "w")
    args = args_for(env, fake_sdscripts, fake_sdscripts.head, "--price", "36", "--max-dollars", "1")
    result = cli(env, *args)
    assert result.returncode == 0, result.stderr
    m = manifest_of(only_run(env))
    assert m.status is RunStatus.FINISHED
    assert m.grid is not None and m.grid.status == "skipped"
    assert "--max-dollars" in m.grid.reason
    assert "no grid:" in result.stderr
    html = (only_run(env) / "report" / "index.html").read_text(encoding="utf-8")
    assert "The grid skipped: the grid needs" in html


def test_sdxl_uses_sdxl_gen_img(tmp_path: Path, fake_sdscripts: FakeSdScripts) -> None:
    env = make_world(tmp_path / "w")
    args = args_for(env, fake_sdscripts, fake_sdscripts.head, "--grid", "epochs=2,strengths=0,1,seeds=1",
                    model="sdxl")  # fmt: skip
    result = cli(env, *args)
    assert result.returncode == 0, result.stderr
    run = only_run(env)
    m = manifest_of(run)
    assert m.grid is not None and m.grid.status == "done" and m.grid.images == 2 + 2
    log = (run / "grid" / m.grid.grid_id / "grid.log").read_text(encoding="utf-8")
    script = Path(m.remote_run_dir) / "grid" / m.grid.grid_id / "run.sh"
    assert "sdxl_gen_img.py" in script.read_text() and "gen_img.py:" in log


def test_grid_over_ssh_survives_a_dropped_connection(
    tmp_path: Path, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    env = make_world(tmp_path / "w")
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(gen_seconds=0.15))
    with TcpRelay(sshd.port) as relay:
        args = args_for(env, fake_sdscripts, commit, "--grid", "seeds=2", target=sshd.target)
        proc = subprocess.Popen(
            [sys.executable, "-m", "kohyawrap", *args, *ssh_args(sshd, relay.port)],
            cwd=env.root, env=env.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _wait_for_grid(env)
        assert relay.cut() >= 1
        _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert "reconnected" in err
    run = only_run(env)
    m = manifest_of(run)
    assert m.grid is not None and m.grid.status == "done" and m.grid.pulled == m.grid.images
    assert_grid_pulled(run, m)


def _wait_for_grid(env: Env, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list(env.runs.glob("*/grid/*/grid.log")) if env.runs.exists() else []
        if runs and runs[0].stat().st_size > 0:
            return
        time.sleep(0.1)
    raise AssertionError("the grid never started")


def test_attach_carries_on_a_grid_the_laptop_left(
    tmp_path: Path, fake_sdscripts: FakeSdScripts
) -> None:
    env = make_world(tmp_path / "w")
    marker = env.root / "finished"
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(gen_seconds=0.1))
    args = args_for(
        env, fake_sdscripts, commit, "--grid", "seeds=2", "--on-finish", f"touch {str(marker)!r}"
    )
    proc = subprocess.Popen([sys.executable, "-m", "kohyawrap", *args], cwd=env.root, env=env.environ(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_for_grid(env)
    proc.kill()
    proc.wait()
    run = only_run(env)
    assert manifest_of(run).grid is not None and not manifest_of(run).grid.ended  # type: ignore[union-attr]
    assert not marker.exists()
    result = cli(env, "attach", run.name, "--runs-dir", str(env.runs), "--poll", "0.2")
    assert result.returncode == 0, result.stderr
    m = manifest_of(run)
    assert m.grid is not None and m.grid.status == "done" and m.grid.pulled == m.grid.images
    assert marker.exists(), "the finish action ran once the grid was done"
    assert_grid_pulled(run, m)


def test_grid_command_on_another_host_uploads_what_it_needs(
    tmp_path: Path, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    env = make_world(tmp_path / "w")
    result = cli(env, *args_for(env, fake_sdscripts, fake_sdscripts.head, "--no-grid"))
    assert result.returncode == 0, result.stderr
    run = only_run(env)
    assert manifest_of(run).grid is None
    prompts = env.root / "my prompts.txt"
    prompts.write_text("# mine\n一只柴犬在雪地里 --n 模糊\n", encoding="utf-8")
    other = env.root / "other work"
    grid = cli(env, "grid", run.name, "--host", sshd.target, *ssh_args(sshd), "--work-dir", str(other),
               "--grid", "epochs=1,strengths=0,0.8,seeds=2", "--sample-prompts", str(prompts),
               "--runs-dir", str(env.runs), "--poll", "0.2", "--json")  # fmt: skip
    assert grid.returncode == 0, grid.stderr
    record = json.loads(grid.stdout)
    assert record["status"] == "done" and record["images"] == 2 + 2
    assert record["prompts"] == ["一只柴犬在雪地里 --n 模糊"]
    # Set up there from scratch: its own sd-scripts, the base model and the checkpoint uploaded.
    assert record["run_dir"].startswith(str(other))
    assert (Path(record["run_dir"]) / "output" / f"{NAME}-000001.safetensors").is_file()
    assert list((other / "models" / "uploads").iterdir())
    m = manifest_of(run)
    assert m.host.target == "local", "the run's own record of its host is unchanged"
    assert_grid_pulled(run, m)
    html = (run / "report" / "index.html").read_text(encoding="utf-8")
    assert "一只柴犬在雪地里" in html and external_references(html) == []


def test_grid_of_a_run_without_checkpoints_or_running_is_refused(tmp_path: Path) -> None:
    env = make_world(tmp_path / "w")
    result = cli(env, "grid", "nothing", "--runs-dir", str(env.runs))
    assert result.returncode == 2 and "no run matches" in result.stderr
    bad = cli(env, "train", "--host", "local", "--model", "sd15", "--dataset", str(env.dataset),
              "--base-model", str(env.base_model), "--name", "x", "--grid", "seeds=99", "--dry-run")  # fmt: skip
    assert bad.returncode == 2 and "seeds must be 1..20" in bad.stderr
    both = cli(env, "train", "--host", "local", "--model", "sd15", "--dataset", str(env.dataset),
               "--base-model", str(env.base_model), "--name", "x", "--grid", "seeds=2", "--no-grid",
               "--dry-run")  # fmt: skip
    assert both.returncode == 2 and "choose one" in both.stderr
    epochs = cli(env, "train", "--host", "local", "--gpu", "rtx4090", "--model", "sd15", "--dataset",
                 str(env.dataset), "--base-model", str(env.base_model), "--name", "x", "--set",
                 "max_train_epochs=4", "--set", "save_every_n_epochs=2", "--grid", "epochs=3",
                 "--dry-run")  # fmt: skip
    assert epochs.returncode == 2 and "epoch(s) 3" in epochs.stderr and "2, 4" in epochs.stderr


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless Chromium here (Debian: apt-get install chromium; .ci/run installs it)")


def _headless(
    browser: str, page: Path, profile: Path, *mode: str
) -> subprocess.CompletedProcess[str]:
    # No network at all: every host resolves to nothing and the proxy is a closed port, so the
    # page can only show what lies next to it.
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=15000", *mode,
         page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_report_opens_from_disk_in_headless_chromium(
    trained: tuple[Env, Path, str], tmp_path: Path
) -> None:
    browser = _chromium()
    _, run, _ = trained
    # Copied away from the run folder: the page needs nothing but its own folder.
    copy = tmp_path / "报告 copy"
    shutil.copytree(run / "report", copy)
    page = copy / "index.html"
    html = page.read_text(encoding="utf-8")
    assert external_references(html) == []
    assert "http://" not in html and "https://" not in html
    from kohyawrap.evaluate.page import _REFERENCE

    for match in _REFERENCE.finditer(html):
        ref = next(g for g in match.groups() if g is not None)
        if not ref.startswith("#"):
            assert (copy / unquote(ref)).is_file(), f"broken link {ref}"
    dom = _headless(browser, page, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    images = re.search(r'data-images="(\d+)"', dom.stdout)
    broken = re.search(r'data-broken="(\d+)"', dom.stdout)
    assert images and broken, "the page's load handler did not run"
    assert int(images.group(1)) == html.count("<img ") > DEFAULT_IMAGES
    assert broken.group(1) == "0", "images that did not load"
    shot = tmp_path / "shot.png"
    taken = _headless(browser, page, tmp_path / "profile2", f"--screenshot={shot}",
                      "--window-size=1280,3000")  # fmt: skip
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    with Image.open(shot) as picture:
        grey = picture.convert("L")
        assert ImageStat.Stat(grey).stddev[0] > 20, "a blank page"
        colours = picture.convert("RGB").getcolors(1 << 22) or []
        assert len(colours) > 2000, "text alone: the plot and images did not render"
        # The grid's tables are far down: the first contact sheet's images are in the shot.
        assert picture.size == (1280, 3000)


def test_samples_arrive_while_training_and_attach_shows_them(
    tmp_path: Path, fake_sdscripts: FakeSdScripts
) -> None:
    env = make_world(tmp_path / "w")
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.25))
    args = args_for(env, fake_sdscripts, commit, "--no-grid", epochs=4)
    proc = subprocess.Popen([sys.executable, "-m", "kohyawrap", *args], cwd=env.root, env=env.environ(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    run: Path | None = None
    while time.monotonic() < deadline:
        found = list(env.runs.glob("*/samples/*.png")) if env.runs.exists() else []
        if found:
            run = found[0].parent.parent
            break
        time.sleep(0.1)
    assert run is not None, "no sample arrived while training"
    m = manifest_of(run)
    assert m.status is RunStatus.RUNNING, "pulled during training, not at the end"
    proc.kill()
    proc.wait()
    before = {p.name for p in (run / "samples").iterdir()}
    result = cli(env, "attach", run.name, "--runs-dir", str(env.runs), "--poll", "0.2")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (run / "samples").iterdir())
    prompts = (run / "config" / "sample_prompts.txt").read_text(encoding="utf-8").splitlines()
    per_epoch = len([line for line in prompts if line.strip() and not line.startswith("#")])
    assert len(names) == 4 * per_epoch, names  # four epochs
    shown = " ".join(result.stderr.split())
    for name in set(names) - before:
        assert name in shown, f"attach did not show {name}"
    m = manifest_of(run)
    assert all(f"output/sample/{n}" in m.pulled for n in names)


def test_a_gone_training_host_points_at_grid_elsewhere(
    tmp_path: Path, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    env = make_world(tmp_path / "w")
    with TcpRelay(sshd.port) as relay:
        args = args_for(env, fake_sdscripts, fake_sdscripts.head, "--no-grid", target=sshd.target)
        trained = cli(env, *args, *ssh_args(sshd, relay.port))
        assert trained.returncode == 0, trained.stderr
    run = only_run(env)  # the relay is closed: the host it trained on no longer answers
    gone = cli(env, "grid", run.name, "--runs-dir", str(env.runs), "--reconnect", "0")
    assert gone.returncode == 3, gone.stderr
    assert "--host NEW" in " ".join(gone.stderr.split())
    assert "Traceback" not in gone.stderr
    here = cli(env, "grid", run.name, "--host", "local", "--work-dir", str(env.root / "local work"),
               "--grid", "seeds=1", "--runs-dir", str(env.runs), "--poll", "0.2")  # fmt: skip
    assert here.returncode == 0, here.stderr
    m = manifest_of(run)
    assert m.grid is not None and m.grid.status == "done" and m.grid.host == "local"
    assert_grid_pulled(run, m)
