"""The fake sd-scripts repository: cloned with git, launched like the real one, read back with
our parser, the real ``safetensors`` package and our TensorBoard reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import load_file

from kohyawrap.errors import KohyawrapError
from kohyawrap.logparse import diagnose, parse
from kohyawrap.models import (
    CheckpointSaved,
    EpochStart,
    Event,
    Failure,
    LogWarning,
    ModelSaved,
    Progress,
    TrainingStarted,
)
from kohyawrap.safetensors_header import read_header
from kohyawrap.tensorboard import read_scalars
from tests.fixtures.fakesds import FailMode, FakeBehaviour, FakeSdScripts, git

E = TypeVar("E")
DATA = Path(__file__).parent / "data" / "sdscripts"
ACCELERATE = ("--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--num_cpu_threads_per_process", "2", "--cpu")  # fmt: skip
# The sample run's config (tests/data/sdscripts/sample_run_config.toml), shortened.
CONFIG = """\
[model]
pretrained_model_name_or_path = "model/random-sd15.safetensors"

[dataset]
train_data_dir = "train"
resolution = "128"
caption_extension = ".txt"
train_batch_size = 1

[network]
network_module = "networks.lora"
network_dim = 4
network_alpha = 1.0

[optimizer]
optimizer_type = "AdamW"
learning_rate = 1e-4
unet_lr = 1e-4
text_encoder_lr = 5e-5

[training]
output_dir = "output"
output_name = "demo"
max_train_epochs = 2
save_every_n_epochs = 1
mixed_precision = "no"
seed = 42

[logging]
logging_dir = "logs"
log_with = "tensorboard"
"""


@pytest.fixture(scope="module")
def sds(fake_sdscripts: FakeSdScripts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of the default (well-behaved) fake."""
    return fake_sdscripts.clone(tmp_path_factory.mktemp("clone") / "sd-scripts")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder like the sample run's: 4 captioned images in ``10_sks thing``, config.toml."""
    concept = tmp_path / "train" / "10_sks thing"
    concept.mkdir(parents=True)
    for i, color in enumerate(["red", "green", "blue", "yellow"], 1):
        Image.new("RGB", (64, 64), color).save(concept / f"img{i}.png")
        (concept / f"img{i}.txt").write_text(f"sks thing, {color}\n")
    (tmp_path / "train" / "no_prefix_folder").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "no_prefix_folder" / "ignored.png")
    (tmp_path / "config.toml").write_text(CONFIG)
    return tmp_path


def launch(
    sds: Path,
    run_dir: Path,
    *args: str,
    script: str = "train_network.py",
    accelerate: tuple[str, ...] = ACCELERATE,
    columns: str | None = None,
) -> tuple[int, bytes]:
    """``python -m accelerate.commands.launch ... <sds>/<script> --config_file config.toml``."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "PYTHONPATH")}
    env.update(PYTHONPATH=str(sds), PYTHONUNBUFFERED="1")
    if columns is not None:
        env["COLUMNS"] = columns
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *accelerate, str(sds / script)]
    log = run_dir / "stdout.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [*cmd, "--config_file", "config.toml", *args],
            cwd=run_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
    return done.returncode, log.read_bytes()


def of(events: list[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def test_epoch_run_reads_back_like_the_real_one(sds: Path, run_dir: Path) -> None:
    rc, log = launch(sds, run_dir, "--save_state")
    assert rc == 0, log.decode()[-2000:]
    events = parse(log)
    assert of(events, TrainingStarted) == [TrainingStarted(40, 40, 2, 1, 80)]
    assert of(events, EpochStart) == [EpochStart(1, 2), EpochStart(2, 2)]
    assert of(events, CheckpointSaved) == [
        CheckpointSaved("output/demo-000001.safetensors"),
        CheckpointSaved("output/demo.safetensors"),
    ]
    assert of(events, ModelSaved) == [ModelSaved()]
    assert of(events, Failure) == []
    assert (of(events, Progress)[-1].step, of(events, Progress)[-1].total) == (80, 80)
    assert any(w.message.startswith("ignore directory without") for w in of(events, LogWarning))
    state = json.loads((run_dir / "output/demo-000001-state/train_state.json").read_text())
    assert state == {"current_epoch": 1, "current_step": 40}
    assert (run_dir / "output/demo-state/model.safetensors").is_file()


def test_checkpoints_load_with_safetensors(
    sds: Path, run_dir: Path, fake_sdscripts: FakeSdScripts
) -> None:
    assert launch(sds, run_dir)[0] == 0
    for name, epoch, steps in (("demo-000001", "1", "40"), ("demo", "2", "80")):
        path = run_dir / "output" / f"{name}.safetensors"
        tensors = load_file(str(path))
        assert any(k.startswith("lora_unet_") for k in tensors)
        assert any(k.startswith("lora_te_") for k in tensors)
        assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (
            4,
            8,
        )
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata()
        assert read_header(path)[1] == meta
        assert (meta["ss_epoch"], meta["ss_steps"], meta["ss_num_epochs"]) == (epoch, steps, "2")
        assert meta["ss_sd_scripts_commit_hash"] == fake_sdscripts.head
        assert meta["ss_dataset_dirs"] == '{"10_sks thing": {"n_repeats": 10, "img_count": 4}}'
        assert (meta["ss_resolution"], meta["ss_base_model_version"]) == ("(128, 128)", "sd_v1")
        assert meta["modelspec.title"] == "demo"


def test_metadata_keys_are_real_sd_scripts_keys(sds: Path, run_dir: Path) -> None:
    assert launch(sds, run_dir)[0] == 0
    real = json.loads((DATA / "sample_run_metadata_demo.json").read_text())
    meta = read_header(run_dir / "output" / "demo.safetensors")[1]
    assert set(meta) <= set(real)
    same = (
        "ss_learning_rate",
        "ss_unet_lr",
        "ss_text_encoder_lr",
        "ss_network_alpha",
        "ss_optimizer",
        "ss_tag_frequency",
        "ss_num_train_images",
        "modelspec.architecture",
    )
    assert {k: meta[k] for k in same} == {k: real[k] for k in same}


def test_tensorboard_events_read_back(sds: Path, run_dir: Path) -> None:
    rc, log = launch(sds, run_dir)
    assert rc == 0
    files = list((run_dir / "logs").glob("*/network_train/events.out.tfevents.*"))
    assert len(files) == 1
    assert len(files[0].parts[-3]) == len("YYYYmmddHHMMSS")
    scalars = read_scalars(files[0])
    for tag in ("loss/current", "loss/average", "lr/unet", "lr/textencoder", "lr/group1"):
        assert [step for step, _ in scalars[tag]] == list(range(1, 81))
    assert [step for step, _ in scalars["loss/epoch_average"]] == [1, 2]
    assert scalars["lr/textencoder"][0][1] == pytest.approx(5e-5)
    final = of(parse(log), Progress)[-1].avr_loss
    assert final == pytest.approx(scalars["loss/average"][-1][1], abs=0.006)  # 3 digits shown


def test_simple_log_and_step_saves(sds: Path, run_dir: Path) -> None:
    args = ("--console_log_simple", "--max_train_epochs", "0", "--max_train_steps", "4")
    rc, log = launch(sds, run_dir, *args, "--save_every_n_steps", "2")
    assert rc == 0
    assert b"                    INFO     prepare images." not in log  # plain messages now
    events = parse(log)
    names = [Path(c.path).name for c in of(events, CheckpointSaved)]
    assert names == [
        "demo-step00000002.safetensors",
        "demo-step00000004.safetensors",
        "demo.safetensors",
    ]
    assert of(events, TrainingStarted) == [TrainingStarted(40, 40, 1, 1, 4)]
    meta = read_header(run_dir / "output" / "demo-step00000002.safetensors")[1]
    assert (meta["ss_epoch"], meta["ss_steps"]) == ("0", "2")  # step saves: 0-based epoch


def test_wide_columns_give_one_line_records_and_the_same_events(sds: Path, run_dir: Path) -> None:
    narrow = parse(launch(sds, run_dir)[1])
    rc, wide_log = launch(sds, run_dir, columns="250")
    assert rc == 0
    assert b"Loading settings from config.toml..." in wide_log
    wide = parse(wide_log)

    def shape(events: list[Event]) -> list[object]:
        return [(e.step, e.avr_loss) if isinstance(e, Progress) else e for e in events]

    assert shape(wide) == shape(narrow)


def test_accelerate_warns_about_missing_launch_options(sds: Path, run_dir: Path) -> None:
    rc, log = launch(sds, run_dir, accelerate=("--cpu",))
    assert rc == 0
    warnings = [w.message for w in of(parse(log), LogWarning)]
    assert any("--num_processes was set to a value of 1" in w for w in warnings)
    quiet = parse(launch(sds, run_dir)[1])
    assert not any("accelerate launch" in w.message for w in of(quiet, LogWarning))


def test_resume_from_a_state_folder(sds: Path, run_dir: Path) -> None:
    assert launch(sds, run_dir, "--save_state")[0] == 0
    args = ("--resume", "output/demo-000001-state", "--output_dir", "output_resume")
    rc, log = launch(sds, run_dir, *args)
    assert rc == 0
    events = parse(log)
    assert of(events, EpochStart) == [EpochStart(2, 2)]
    last = of(events, Progress)[-1]
    assert (last.step, last.total) == (40, 80)
    meta = read_header(run_dir / "output_resume" / "demo.safetensors")[1]
    assert (meta["ss_epoch"], meta["ss_steps"]) == ("2", "40")


def test_sdxl_script(sds: Path, run_dir: Path) -> None:
    rc, _ = launch(sds, run_dir, "--network_train_unet_only", script="sdxl_train_network.py")
    assert rc == 0
    tensors, meta = read_header(run_dir / "output" / "demo.safetensors")
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert all(name.startswith("lora_unet_") for name in tensors)


DATASET_CONFIG = """\
[general]
caption_extension = ".txt"

[[datasets]]
resolution = [256, 192]
batch_size = 2

  [[datasets.subsets]]
  image_dir = "train/10_sks thing"
  num_repeats = 5
"""


def test_dataset_config_sets_resolution_and_batch_size(sds: Path, run_dir: Path) -> None:
    (run_dir / "dataset_config.toml").write_text(DATASET_CONFIG)
    config = run_dir / "config.toml"
    dataset_lines = 'train_data_dir = "train"\nresolution = "128"\n'
    config.write_text(
        config.read_text().replace(dataset_lines, 'dataset_config = "dataset_config.toml"\n')
    )
    rc, log = launch(sds, run_dir)
    assert rc == 0, log.decode()[-2000:]
    assert of(parse(log), TrainingStarted) == [TrainingStarted(20, 10, 2, 2, 20)]
    meta = read_header(run_dir / "output" / "demo.safetensors")[1]
    assert (meta["ss_resolution"], meta["modelspec.resolution"]) == ("(256, 192)", "256x192")


@pytest.mark.parametrize(
    ("mutation", "kind", "text"),
    [
        (('resolution = "128"', "resolution = 128"), "config", b"no attribute 'split'"),
        (('network_module = "networks.lora"', ""), "config", b"import network module: None"),
    ],
)
def test_config_mistakes_fail_like_sd_scripts(
    sds: Path, run_dir: Path, mutation: tuple[str, str], kind: str, text: bytes
) -> None:
    config = run_dir / "config.toml"
    config.write_text(config.read_text().replace(*mutation))
    rc, log = launch(sds, run_dir)
    assert rc == 1
    assert text in log
    assert b"subprocess.CalledProcessError" in log  # accelerate's own traceback follows
    failure = diagnose(log.decode("utf-8"))
    assert failure is not None
    assert failure.kind == kind
    assert not (run_dir / "output").exists()


def test_no_images_logs_no_data_and_exits_zero(sds: Path, run_dir: Path) -> None:
    for image in (run_dir / "train" / "10_sks thing").glob("*.png"):
        image.rename(image.with_suffix(".Png"))  # sd-scripts' glob is case-sensitive
    rc, log = launch(sds, run_dir)
    assert rc == 0
    failures = of(parse(log), Failure)
    assert [f.kind for f in failures] == ["no_data"]
    assert "no_prefix_folder" in failures[0].hint


def test_missing_config_file(sds: Path, run_dir: Path) -> None:
    (run_dir / "config.toml").unlink()
    rc, log = launch(sds, run_dir)
    assert rc == 1
    assert b"config.toml not found." in log


@pytest.fixture(scope="module")
def behaviours(
    fake_sdscripts: FakeSdScripts, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """One clone per failure mode, each checked out at its behaviour commit."""
    clones: dict[str, Path] = {}
    modes: tuple[FailMode, ...] = ("oom", "crash", "disk", "import", "nan")
    for mode in modes:
        sha = fake_sdscripts.commit_behaviour(FakeBehaviour(fail=mode, fail_at_step=3))
        clones[mode] = fake_sdscripts.clone(tmp_path_factory.mktemp(mode) / "sd-scripts", sha)
    return clones


@pytest.mark.parametrize(
    ("mode", "kind", "saved"),
    [("oom", "oom", 2), ("crash", "other", 2), ("disk", "disk", 2), ("import", "import", 0)],
)
def test_failure_modes(
    behaviours: dict[str, Path], run_dir: Path, mode: str, kind: str, saved: int
) -> None:
    rc, log = launch(behaviours[mode], run_dir, "--save_every_n_steps", "1")
    assert rc == 1
    failures = of(parse(log), Failure)
    assert [f.kind for f in failures] == [kind]
    assert diagnose(log.decode("utf-8")) == failures[0]
    whole = sorted((run_dir / "output").glob("*.safetensors")) if saved else []
    assert [p.name for p in whole[:saved]] == [
        f"demo-step{n:08d}.safetensors" for n in range(1, saved + 1)
    ]
    for path in whole[:saved]:
        assert load_file(str(path))  # checkpoints written before the failure are whole


def test_disk_full_leaves_a_half_written_checkpoint(
    behaviours: dict[str, Path], run_dir: Path
) -> None:
    rc, _ = launch(behaviours["disk"], run_dir, "--save_every_n_steps", "1")
    assert rc == 1
    with pytest.raises(KohyawrapError):
        read_header(run_dir / "output" / "demo-step00000003.safetensors")


def test_nan_loss_keeps_training_and_exits_zero(behaviours: dict[str, Path], run_dir: Path) -> None:
    rc, log = launch(behaviours["nan"], run_dir)
    assert rc == 0
    events = parse(log)
    assert [f.kind for f in of(events, Failure)] == ["nan"]
    assert of(events, ModelSaved) == [ModelSaved()]


def test_behaviour_commits(fake_sdscripts: FakeSdScripts, tmp_path: Path) -> None:
    slow = FakeBehaviour(step_seconds=0.5)
    sha = fake_sdscripts.commit_behaviour(slow)
    assert sha == fake_sdscripts.commit_behaviour(slow)  # same content, same commit
    assert sha != fake_sdscripts.head
    assert git(fake_sdscripts.path, "rev-parse", "HEAD") == fake_sdscripts.head  # main unmoved
    clone = fake_sdscripts.clone(tmp_path / "clone", sha)
    assert json.loads((clone / "fake_behaviour.json").read_text())["step_seconds"] == 0.5
    assert git(clone, "rev-parse", "HEAD") == sha


def test_fake_needs_nothing_installed(sds: Path) -> None:
    lines = (sds / "requirements.txt").read_text().splitlines()
    assert all(not line.strip() or line.startswith("#") for line in lines)
    assert not (sds / "setup.py").exists()
    assert (sds / "networks" / "lora.py").is_file()
    assert (sds / "accelerate" / "commands" / "launch.py").is_file()


# ---------------------------------------------------------------------------------------------
# flux_train_network.py (FLUX.1, Chroma) and sd3_train_network.py (SD3.5)


def _dit_run(run_dir: Path, model: str, **changes: object) -> None:
    """A config rendered by kohyawrap for ``model`` (smoke options), its files on disk."""
    from dataclasses import replace as with_changes

    from kohyawrap.models import RunSpec
    from kohyawrap.presets import load_catalog
    from kohyawrap.render import render_run

    catalog = load_catalog(user_dir=Path("/nonexistent-kohyawrap-user-dir"))
    keys = [c.key for c in catalog.model(model).family_info.companions]
    name = {
        "flux-schnell": "flux1-schnell.safetensors",
        "sd35-medium": "sd3.5_medium.safetensors",
    }.get(model, "base 模型.safetensors")
    models = run_dir / "models"
    models.mkdir()
    for file in (name, *(f"{k}.safetensors" for k in keys)):
        (models / file).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    spec = RunSpec(
        gpu="rtx4090",
        model=model,
        base_model=f"models/{name}",
        companions=tuple((k, f"models/{k}.safetensors") for k in keys),
        output_name="demo",
        train_data_dir="train",
        smoke=True,
        overrides=(("max_train_steps", 6), ("save_every_n_steps", 3)),
    )
    rendered = render_run(with_changes(spec, **changes), catalog=catalog)  # type: ignore[arg-type]
    (run_dir / "config.toml").write_text(rendered.files["training_config.toml"])


@pytest.mark.parametrize(
    ("model", "script", "version", "architecture", "module"),
    [
        (
            "flux-dev",
            "flux_train_network.py",
            "flux1",
            "flux-1-dev/lora",
            "lora_unet_double_blocks",
        ),
        ("flux-schnell", "flux_train_network.py", "flux1", "flux-1-schnell/lora", "lora_unet_"),
        ("chroma", "flux_train_network.py", "chroma", "chroma/lora", "lora_unet_single_blocks"),
        (
            "sd35-large",
            "sd3_train_network.py",
            "5-large",
            "stable-diffusion-3-5-large/lora",
            "lora_unet_joint_blocks",
        ),
        (
            "sd35-medium",
            "sd3_train_network.py",
            "5-medium",
            "stable-diffusion-3-5-medium/lora",
            "lora_unet_joint_blocks",
        ),
    ],
)
def test_dit_scripts_train_a_rendered_config(
    sds: Path, run_dir: Path, model: str, script: str, version: str, architecture: str, module: str
) -> None:
    _dit_run(run_dir, model)
    rc, log = launch(sds, run_dir, script=script)
    assert rc == 0, log.decode()[-3000:]
    text = log.decode()
    events = parse(log)
    assert [c.path for c in of(events, CheckpointSaved)] == [
        "output/demo-step00000003.safetensors",
        "output/demo-step00000006.safetensors",
        "output/demo.safetensors",
    ]
    assert of(events, Failure) == [] and of(events, ModelSaved) == [ModelSaved()]
    meta = read_header(run_dir / "output" / "demo.safetensors")[1]
    assert meta["ss_base_model_version"] == version
    assert meta["modelspec.architecture"] == architecture
    assert meta["ss_network_module"] == (
        "networks.lora_sd3" if "sd3" in script else "networks.lora_flux"
    )
    assert all(
        k.startswith(module[:10]) for k in load_file(str(run_dir / "output/demo.safetensors"))
    )
    assert any(k.startswith(module) for k in load_file(str(run_dir / "output/demo.safetensors")))
    assert "Loaded AE" in text if script.startswith("flux") else "Loaded CLIP-G" in text
    assert ("Building CLIP-L" in text) == (model != "chroma")
    if model.startswith("flux"):
        assert meta["ss_guidance_scale"] == "1.0" and "modelspec.prediction_type" not in meta


def test_flux_stops_at_start_up_when_a_companion_file_is_missing(sds: Path, run_dir: Path) -> None:
    _dit_run(run_dir, "flux-dev")
    (run_dir / "models" / "ae.safetensors").unlink()
    rc, log = launch(sds, run_dir, script="flux_train_network.py")
    assert rc != 0
    failure = diagnose(log.decode())
    assert failure is not None and "models/ae.safetensors" in failure.message
    assert not (run_dir / "output" / "demo.safetensors").exists()


def test_chroma_asserts_the_t5_attention_mask(sds: Path, run_dir: Path) -> None:
    # kohyawrap refuses to render this (validate: chroma-t5-mask); a hand-edited file gets through.
    _dit_run(run_dir, "chroma")
    config = run_dir / "config.toml"
    text = config.read_text()
    config.write_text(text.replace("apply_t5_attn_mask = true", "apply_t5_attn_mask = false"))
    rc, log = launch(sds, run_dir, script="flux_train_network.py")
    assert rc != 0 and b"AssertionError: apply_t5_attn_mask must be True for Chroma" in log


def test_a_second_resume_miscounts_like_sd_scripts_unless_told_the_epoch(
    sds: Path, run_dir: Path
) -> None:
    """sd-scripts restarts its step count in a resumed run, so the state that run saves holds
    only its own steps; resuming from that alone repeats an epoch. --initial_epoch fixes it
    (what kohyawrap passes, launcher/states.py)."""
    three = ("--max_train_epochs", "3", "--save_state")
    assert launch(sds, run_dir, *three)[0] == 0
    leg2 = ("--resume", "output/demo-000001-state", "--output_dir", "out2")
    rc, log = launch(sds, run_dir, *three, *leg2, columns="250")
    assert rc == 0
    assert b"load train state from output/demo-000001-state/train_state.json:" in log
    assert of(parse(log), EpochStart) == [EpochStart(2, 3), EpochStart(3, 3)]
    state = json.loads((run_dir / "out2" / "demo-000002-state" / "train_state.json").read_text())
    assert state == {"current_epoch": 2, "current_step": 40}  # not 80: the leg's own count

    naive = ("--resume", "out2/demo-000002-state", "--output_dir", "out3")
    rc, log = launch(sds, run_dir, *three, *naive)
    assert rc == 0
    assert of(parse(log), EpochStart)[0] == EpochStart(2, 3)  # epoch 2 again: the miscount

    told = (*naive[:2], "--initial_epoch", "3", "--output_dir", "out4")
    rc, log = launch(sds, run_dir, *three, *told, columns="250")
    assert rc == 0
    assert of(parse(log), EpochStart) == [EpochStart(3, 3)]
    assert b"steps from the state is ignored because initial_step is specified" in log
    meta = read_header(run_dir / "out4" / "demo.safetensors")[1]
    assert (meta["ss_epoch"], meta["ss_steps"]) == ("3", "40")


def test_resume_past_the_last_epoch_is_refused_like_sd_scripts(sds: Path, run_dir: Path) -> None:
    assert launch(sds, run_dir, "--save_state")[0] == 0
    rc, log = launch(sds, run_dir, "--resume", "output/demo-state", "--output_dir", "o2")
    assert rc == 1
    assert b"max_train_steps should be greater than initial step" in log


@pytest.fixture(scope="module")
def small_card(fake_sdscripts: FakeSdScripts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Out of memory above batch 2, unless gradient checkpointing is on."""
    sha = fake_sdscripts.commit_behaviour(
        FakeBehaviour(fail="oom", fail_at_step=1, oom_max_batch=2, oom_fixed_by_checkpointing=True)
    )
    return fake_sdscripts.clone(tmp_path_factory.mktemp("small") / "sd-scripts", sha)


@pytest.mark.parametrize(
    ("args", "fails"),
    [
        (("--train_batch_size", "4"), True),
        (("--train_batch_size", "2"), False),
        (("--train_batch_size", "4", "--gradient_checkpointing"), False),
    ],
)
def test_out_of_memory_depends_on_the_settings(
    small_card: Path, run_dir: Path, args: tuple[str, ...], fails: bool
) -> None:
    rc, log = launch(small_card, run_dir, *args)
    assert (rc == 1) == fails
    assert (b"CUDA out of memory" in log) == fails


CHAIN = DATA / "resume_chain"


def _chain_facts(log: bytes) -> tuple[list[EpochStart], tuple[int, int], list[str]]:
    events = parse(log)
    last = of(events, Progress)[-1]
    text = log.decode("utf-8", "replace")
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.startswith(("load train state", "save train state", "steps from the state"))
    ]
    return of(events, EpochStart), (last.step, last.total), lines


def test_the_resume_chain_matches_the_real_one(sds: Path, tmp_path: Path) -> None:
    """The fake, run through the same chain as tests/data/sdscripts/resume_chain, prints the same
    epochs, step counts and train-state lines as the real sd-scripts did."""
    run = tmp_path / "chain"
    concept = run / "train" / "1_sks thing"
    concept.mkdir(parents=True)
    for i, color in enumerate(["red", "blue"]):
        Image.new("RGB", (64, 64), color).save(concept / f"img{i}.png")
        (concept / f"img{i}.txt").write_text(f"sks thing, {color}\n")
    (run / "config.toml").write_text((CHAIN / "config.toml").read_text())
    legs = {
        "leg1": (),
        "leg2": ("--resume", "output/demo-000001-state", "--output_dir", "out2", "--logging_dir",
                 "logs2"),
        "leg3naive": ("--resume", "out2/demo-000002-state", "--output_dir", "out3"),
        "leg3told": ("--resume", "out2/demo-000002-state", "--initial_epoch", "3", "--output_dir",
                     "out4"),
    }  # fmt: skip
    for name, args in legs.items():
        rc, log = launch(sds, run, *args)
        assert rc == 0, log.decode()[-2000:]
        assert _chain_facts(log) == _chain_facts((CHAIN / f"{name}.log").read_bytes()), name
    for leg, folder in (("leg1", "output"), ("leg2", "out2")):
        real = json.loads((CHAIN / f"train_state_{leg}_demo-000002-state.json").read_text())
        fake = json.loads((run / folder / "demo-000002-state" / "train_state.json").read_text())
        assert fake == real, leg
