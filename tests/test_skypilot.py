"""`kohyawrap export skypilot`: the task is loaded by SkyPilot's own task loader (SkyPilot is
installed from the package registry into a venv of its own, cached at .venv-skypilot, because its
pins do not belong in the project's environment), and its `setup` and `run` scripts are run on
the loopback sshd as SkyPilot would run them on a node, with the fake sd-scripts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from kohyawrap.errors import UsageError
from kohyawrap.hosts.base import sh
from kohyawrap.launcher.request import TrainRequest, build_run_plan
from kohyawrap.launcher.runplan import RunPlan, SetupOptions
from kohyawrap.launcher.skypilot import SkyOptions, export_task, skypilot_plan
from kohyawrap.models import RunSpec
from kohyawrap.safetensors_header import read_header
from tests.fixtures.fakesds import FakeSdScripts
from tests.fixtures.runs import Env, kohyawrap
from tests.fixtures.sshd import Sshd

ROOT = Path(__file__).resolve().parent.parent
SKY_VENV = ROOT / ".venv-skypilot"
NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)

_LOAD = r"""
import json, sys
import sky
task = sky.Task.from_yaml(sys.argv[1])
res = list(task.resources)
out = {
    "version": sky.__version__,
    "name": task.name,
    "num_nodes": task.num_nodes,
    "setup": task.setup,
    "run": task.run,
    "file_mounts": task.file_mounts or {},
    "storage_mounts": {k: {"source": v.source, "mode": v.mode.name}
                       for k, v in (task.storage_mounts or {}).items()},
    "resources": [{
        "accelerators": r.accelerators,
        "disk_size": r.disk_size,
        "use_spot": r.use_spot,
        "infra": str(r.infra) if getattr(r, "infra", None) else None,
        "autostop": None if r.autostop_config is None else {
            "idle_minutes": r.autostop_config.idle_minutes, "down": r.autostop_config.down},
    } for r in res],
}
print(json.dumps(out))
"""


def skypilot_requirement() -> str:
    import tomlkit

    data = tomlkit.parse((ROOT / "pyproject.toml").read_text("utf-8")).unwrap()
    return str(data["project"]["optional-dependencies"]["skypilot"][0])


@pytest.fixture(scope="session")
def sky_python() -> Path:
    """Python of a venv with SkyPilot (the `kohyawrap[skypilot]` requirement), installed on
    first use (about a minute) and kept for later runs."""
    python = SKY_VENV / "bin" / "python"
    if (
        python.exists()
        and subprocess.run([python, "-c", "import sky"], check=False).returncode == 0
    ):
        return python
    shutil.rmtree(SKY_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(SKY_VENV)], check=True)
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         skypilot_requirement()],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if install.returncode != 0:
        pytest.skip(f"SkyPilot could not be installed from the registry: {install.stderr[-600:]}")
    return python


def load_with_skypilot(python: Path, task_yaml: Path) -> dict:
    result = subprocess.run(
        [python, "-c", _LOAD, str(task_yaml)], capture_output=True, text=True, timeout=300,
        cwd=task_yaml.parent, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def a_plan(world: Env, fake: FakeSdScripts, *, upload: bool = True, name: str = "柴犬") -> RunPlan:
    request = TrainRequest(
        spec=RunSpec(
            gpu="rtx4090", model="sd15", output_name=name,
            base_model=str(world.base_model) if upload else "org/some-model",
            overrides=(("max_train_epochs", 2), ("save_every_n_epochs", 1),
                       ("train_batch_size", 1)),
        ),
        dataset=world.dataset,
        setup=SetupOptions(repo=fake.url, ref=fake.head, torch_spec="skip"),
        force=True,
    )  # fmt: skip
    return build_run_plan(request, target="root@gpu.example", home="/root", now=NOW)


@pytest.mark.slow  # installs SkyPilot once, or trains
def test_the_task_loads_in_skypilot_with_resources_mounts_setup_run(
    world: Env, fake_sdscripts: FakeSdScripts, sky_python: Path
) -> None:
    plan = a_plan(world, fake_sdscripts)
    out = world.root / "导出" / "task.yaml"
    options = SkyOptions(nodes=2, gpus_per_node=4, spot=True, infra="aws", idle_minutes=10)
    task = export_task(plan, options, out, NOW)
    loaded = load_with_skypilot(sky_python, out)
    assert loaded["num_nodes"] == 2
    (res,) = loaded["resources"]
    assert res["accelerators"] == {"RTX4090": 4} and res["use_spot"] is True
    assert res["autostop"] == {"idle_minutes": 10, "down": False}
    assert res["disk_size"] >= 50 and "aws" in res["infra"].lower()
    sky = task.plan
    mounts = loaded["file_mounts"]
    files = out.parent / "task-files"
    assert mounts[sky.layout.in_run("training_config.toml")] == str(files / "training_config.toml")
    assert mounts[sky.layout.in_run("dataset")] == str(world.dataset.resolve())
    assert mounts[sky.base_file.remote_path] == str(world.base_model.resolve())  # uploaded model
    assert (files / "training_config.toml").read_text("utf-8") == sky.rendered.files[
        "training_config.toml"
    ]
    assert RunPlan.from_json(json.loads((files / "plan.json").read_text("utf-8"))) == sky
    # Set-up and run are the rendered scripts, byte for byte, as over SSH.
    assert 'git -C "$tmp" fetch --quiet --depth 1 origin "$REF"' in loaded["setup"]
    assert "KW venv=cached" in loaded["setup"] and "files.sh" not in loaded["setup"]
    assert (
        "accelerate.commands.launch --multi_gpu --num_processes 8 --num_machines 2"
        in (loaded["run"])
    )
    assert '--machine_rank "${SKYPILOT_NODE_RANK:?}"' in loaded["run"]
    assert sky.layout.work == "/kohyawrap" and sky.target == "skypilot"
    # 8 processes: the steps are sd-scripts' for 8 (4 images x 10 repeats = 40 batches -> 5).
    assert sky.spec.processes == 8 and sky.estimate.steps == 2 * 5


@pytest.mark.slow  # installs SkyPilot once, or trains
def test_outputs_to_a_bucket_and_autodown(
    world: Env, fake_sdscripts: FakeSdScripts, sky_python: Path
) -> None:
    plan = a_plan(world, fake_sdscripts, upload=False)
    out = world.root / "task.yaml"
    options = SkyOptions(bucket="s3://my-loras/柴犬", down=True, idle_minutes=5)
    task = export_task(plan, options, out, NOW)
    loaded = load_with_skypilot(sky_python, out)
    output = task.plan.layout.in_run("output")
    assert loaded["storage_mounts"] == {
        output: {"source": "s3://my-loras/柴犬", "mode": "MOUNT_CACHED"}
    }
    assert loaded["resources"][0]["autostop"] == {"idle_minutes": 5, "down": True}
    assert loaded["num_nodes"] == 1
    assert "--multi_gpu" not in loaded["run"] and "SKYPILOT_NODE_IPS" not in loaded["run"]
    # A Hugging Face model is downloaded by files.sh, its token read from standard input.
    assert 'printf \'%s\\n\' "${HF_TOKEN:-}" | bash "$kw/files.sh"' in loaded["setup"]
    # Declared, never filled in: `sky launch --secret HF_TOKEN` passes it from the laptop's env.
    assert yaml.safe_load(out.read_text("utf-8"))["secrets"] == {"HF_TOKEN": None}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (SkyOptions(down=True), "--down tears the cluster down"),
        (SkyOptions(bucket="my-bucket"), "is not a bucket URL"),
        (SkyOptions(work_dir="kohyawrap"), "must be absolute"),
    ],
)
def test_what_would_lose_the_lora_is_refused(
    world: Env, fake_sdscripts: FakeSdScripts, options: SkyOptions, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        skypilot_plan(a_plan(world, fake_sdscripts), options, NOW)


def test_a_card_no_cloud_offers_needs_an_accelerator_name(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    from dataclasses import replace

    plan = a_plan(world, fake_sdscripts)
    small = replace(plan, spec=replace(plan.spec, gpu="rtx3060-12gb"))
    with pytest.raises(UsageError, match="has no SkyPilot accelerator name"):
        export_task(small, SkyOptions(), world.root / "t.yaml", NOW)
    task = export_task(small, SkyOptions(accelerator="RTX3060"), world.root / "t.yaml", NOW)
    assert '"accelerators": "RTX3060:1"' in task.yaml


# ---------------------------------------------------------------------------------------------
# The exported scripts, run the way SkyPilot runs them, on the loopback sshd


@pytest.mark.slow  # installs SkyPilot once, or trains
def test_exported_setup_and_run_train_on_the_loopback_sshd(
    world: Env, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    plan = a_plan(world, fake_sdscripts)
    out = world.root / "task.yaml"
    work = str(world.root / "node" / "kohyawrap")
    task = export_task(plan, SkyOptions(work_dir=work), out, NOW)
    data = yaml.safe_load(out.read_text("utf-8"))  # what SkyPilot reads
    host = sshd.connect()
    try:
        # SkyPilot's file mounts: each local path copied to its path on the node.
        for dest, local in data["file_mounts"].items():
            source = Path(local)
            if source.is_dir():
                files = {
                    p.relative_to(source).as_posix(): p for p in source.rglob("*") if p.is_file()
                }
                host.upload_tree(files, dest)
            else:
                host.upload_tree({Path(dest).name: source}, str(Path(dest).parent))
        env = "export SKYPILOT_NODE_RANK=0 SKYPILOT_NUM_NODES=1 SKYPILOT_NODE_IPS=127.0.0.1; "
        setup = host.run(env + "bash -c " + sh(data["setup"]), check=False, timeout=600)
        assert setup.exit_code == 0, setup.stdout + setup.stderr
        assert "KW clone=fresh" in setup.stdout and "KW venv=fresh" in setup.stdout
        run = host.run(env + "bash -c " + sh(data["run"]), check=False, timeout=600)
        assert run.exit_code == 0, run.stdout + run.stderr
        again = host.run(env + "bash -c " + sh(data["run"]), check=False, timeout=60)
        assert again.exit_code == 0 and "was already started here" in again.stdout
    finally:
        host.close()
    run_dir = Path(task.plan.layout.run_dir)
    assert (run_dir / "exit_code").read_text().strip() == "0"
    name = task.plan.output_name
    _, meta = read_header(run_dir / "output" / f"{name}.safetensors")
    assert meta["ss_output_name"] == name
    log = (run_dir / "run.log").read_text("utf-8")
    assert f"学習ステップ数: {task.plan.estimate.steps}" in log
    assert not (world.root / "pwned").exists()


@pytest.mark.slow
def test_export_through_the_cli_from_a_dry_run_plan(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    dry = kohyawrap(
        world, "train", "--host", "root@gpu.example", "--gpu", "rtx4090", "--model", "sd15",
        "--dataset", str(world.dataset), "--base-model", str(world.base_model), "--name", "柴犬",
        "--sd-scripts-repo", fake_sdscripts.url, "--sd-scripts-ref", fake_sdscripts.head,
        "--dry-run", "--json",
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    plan_file = world.root / "plan.json"
    plan_file.write_text(dry.stdout, encoding="utf-8")
    result = kohyawrap(world, "export", "skypilot", str(plan_file), "-o", "out/task.yaml",
                       "--gpus-per-node", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = (world.root / "out" / "task.yaml").read_text("utf-8")
    assert '"accelerators": "RTX4090:2"' in text and "--num_processes 2" in text
    bad = kohyawrap(world, "export", "skypilot", str(world.base_model), "-o", "t.yaml")
    assert bad.returncode != 0 and "is not a kohyawrap plan" in bad.stderr
    assert "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------------------------
# train --via skypilot: everything but the cloud. SkyPilot's launch cannot run here; what it is
# given is loaded by SkyPilot itself, and what follows it (training over SSH through the config
# entry SkyPilot writes for a cluster) runs against the loopback sshd.


@pytest.mark.slow  # installs SkyPilot once, or trains
def test_the_provisioning_task_loads_in_skypilot(tmp_path: Path, sky_python: Path) -> None:
    from kohyawrap.launcher.skypilot import provision_task

    text = provision_task("a100-80gb", None, SkyOptions(gpus_per_node=2, infra="gcp"), "lora-1")
    path = tmp_path / "provision.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load_with_skypilot(sky_python, path)
    assert loaded["name"] == "lora-1" and loaded["run"] is None and loaded["setup"] is None
    (res,) = loaded["resources"]
    assert res["accelerators"] == {"A100-80GB": 2} and res["autostop"] is None
    assert "gcp" in res["infra"].lower() and res["disk_size"] == 100


def test_without_skypilot_installed_the_error_says_how_to_install_it(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    if subprocess.run([sys.executable, "-c", "import sky"], check=False).returncode == 0:
        pytest.skip("SkyPilot is installed in this environment")
    result = kohyawrap(
        world, "train", "--via", "skypilot", "--host", "lora-1", "--gpu", "rtx4090",
        "--model", "sd15", "--dataset", str(world.dataset), "--base-model", str(world.base_model),
        "--name", "柴犬", "--yes",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert (
        "needs SkyPilot" in result.stderr and "pip install 'kohyawrap[skypilot]'" in result.stderr
    )
    assert "Traceback" not in result.stderr and not world.runs.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--via", "skypilot", "--host", "Lora_1"], "not a SkyPilot cluster name"),
        (["--via", "skypilot", "--host", "lora-1", "--nodes", "2"], "trains on one machine"),
        (["--via", "skypilot", "--host", "lora-1", "--spot"], "a preempted machine"),
        (["--host", "root@gpu.example", "--spot"], "are for SkyPilot"),
    ],
)
def test_via_skypilot_refusals(world: Env, args: list[str], message: str) -> None:
    result = kohyawrap(
        world, "train", *args, "--gpu", "rtx4090", "--model", "sd15", "--dataset",
        str(world.dataset), "--base-model", str(world.base_model), "--name", "x", "--yes",
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not world.runs.exists()


class LoopbackCloud:
    """Stands in for the cloud SkyPilot would rent from: its "cluster" is the loopback sshd, and
    launching writes the SSH config entry SkyPilot writes for a cluster (same keys, host key
    checking off as SkyPilot sets it)."""

    def __init__(self, sshd: Sshd, home: Path) -> None:
        self.sshd, self.home = sshd, home
        self.tasks: list[str] = []
        self.autostops: list[tuple[str, int, bool]] = []

    def launch(self, cluster: str, task_yaml: str) -> Path:
        from kohyawrap.hosts.skypilot import ssh_config_path

        self.tasks.append(task_yaml)
        path = ssh_config_path(cluster, self.home)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"# Added by sky (use locally for the cluster)\nHost {cluster}\n"
            f"  HostName {self.sshd.host}\n  User {self.sshd.user}\n"
            f"  IdentityFile {self.sshd.key_path}\n  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile=/dev/null\n"
            f"  GlobalKnownHostsFile=/dev/null\n  Port {self.sshd.port}\n"
        )
        return path

    def autostop(self, cluster: str, idle_minutes: int, down: bool) -> None:
        self.autostops.append((cluster, idle_minutes, down))


@pytest.mark.slow  # installs SkyPilot once, or trains
def test_via_skypilot_trains_over_ssh_on_the_launched_cluster(
    world: Env, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    from kohyawrap.hosts.connect import ConnectOptions
    from kohyawrap.launcher.manifest import RunStatus
    from kohyawrap.launcher.report import SilentReporter
    from kohyawrap.launcher.runstore import RunStore
    from kohyawrap.launcher.skypilot import after_pull, provision
    from kohyawrap.launcher.verbs import Launcher

    cloud = LoopbackCloud(sshd, world.home)
    request = TrainRequest(
        spec=RunSpec(gpu="rtx4090", model="sd15", base_model=str(world.base_model),
                     output_name="柴犬", overrides=(("max_train_epochs", 2),
                     ("save_every_n_epochs", 1), ("train_batch_size", 1))),
        dataset=world.dataset, work_dir=str(world.work),
        setup=SetupOptions(repo=fake_sdscripts.url, ref=fake_sdscripts.head, torch_spec="skip"),
        force=True,
    )  # fmt: skip
    # Nothing of the user's ~/.ssh: an empty known_hosts, our own record of trusted keys.
    (world.root / "known_hosts").write_text("")
    given = ConnectOptions(known_hosts=str(world.root / "known_hosts"), use_agent=False,
                           trusted_hosts=str(world.root / "trusted_hosts"))  # fmt: skip
    options = SkyOptions(idle_minutes=15)
    connect = provision(request, "lora-1", given, options, cloud)
    assert '"accelerators": "RTX4090:1"' in cloud.tasks[0]
    assert connect.trust_new_host and connect.ssh_config.endswith(".sky/generated/ssh/lora-1")
    launcher = Launcher(RunStore(world.runs), SilentReporter())
    result = launcher.train(request, "lora-1", connect)
    assert result.manifest is not None and result.manifest.status is RunStatus.FINISHED
    assert result.manifest.host.target == "lora-1"
    assert (
        after_pull("lora-1", options, cloud)
        == "cluster lora-1 will be stopped after 15 idle minutes"
    )
    assert cloud.autostops == [("lora-1", 15, False)]
    # The key taken on first sight was recorded: a later pull checks it (no trust asked again).
    assert result.run is not None
    again = launcher.pull(result.run, ConnectOptions(trusted_hosts=given.trusted_hosts,
                                                     known_hosts=given.known_hosts,
                                                     use_agent=False))  # fmt: skip
    assert again.status is RunStatus.FINISHED


def test_a_value_that_would_end_a_script_early_is_refused(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    from dataclasses import replace

    plan = a_plan(world, fake_sdscripts)
    hostile = replace(
        plan, setup=replace(plan.setup, python="python3\nKOHYAWRAP_SCRIPT_END\nrm -rf ~")
    )
    with pytest.raises(UsageError, match="cannot be written into a SkyPilot task"):
        export_task(hostile, SkyOptions(), world.root / "t.yaml", NOW)
    assert not (world.root / "t.yaml").exists()
