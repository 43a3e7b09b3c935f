"""The queue file (docs/queue.md): what a job becomes, and every refusal with the file, the job
and the key in its message. Real files and real datasets (pillow images); nothing is contacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohyawrap.errors import UsageError
from kohyawrap.launcher.queuefile import parse_queue, read_queue_file
from tests.fixtures.images import write_jpeg


def dataset(root: Path, name: str = "data") -> Path:
    folder = root / name / "10_sks dog"
    folder.mkdir(parents=True)
    for i in range(2):
        write_jpeg(folder / f"photo {i}.jpg", size=(64, 64), seed=i)
        (folder / f"photo {i}.txt").write_text("sks dog\n", encoding="utf-8")
    return root / name


def write(root: Path, text: str) -> Path:
    path = root / "jobs.toml"
    path.write_text(text, encoding="utf-8")
    return path


def refused(root: Path, text: str) -> UsageError:
    with pytest.raises(UsageError) as err:
        read_queue_file(write(root, text))
    return err.value


def test_jobs_take_the_defaults_and_their_own_keys(tmp_path: Path) -> None:
    dataset(tmp_path)
    dataset(tmp_path, "数据 2")
    queue = read_queue_file(write(tmp_path, """
[queue]
work_dir = "/data/kw"
torch_spec = "skip"
installer = "pip"

[defaults]
model = "sd15"
base_model = "org/model"
set = { max_train_epochs = 4, resolution = 512 }

[[job]]
name = "柴犬 v2"
dataset = "data"
set = ["max_train_epochs=6", "network_dim=8"]
trigger = "sks"
class_word = "dog"

[[job]]
name = "second"
dataset = "数据 2"
model = "sdxl"
gpu = "rtx4090"
grid = "epochs=2,4,seeds=2"
max_dollars = 3
pull_state = true
"""))  # fmt: skip
    first, second = queue.jobs
    assert first.name == "柴犬 v2" and first.request.spec.output_name == "柴犬 v2"
    # [defaults].set and the job's set merge key by key, the job winning; resolution stays text
    # (sd-scripts reads it as a string), as `--set resolution=512` does.
    assert dict(first.request.spec.overrides) == {
        "max_train_epochs": 6, "resolution": "512", "network_dim": 8
    }  # fmt: skip
    assert first.request.dataset == tmp_path / "data"  # relative to the queue file
    assert first.request.spec.prompt_subjects == ("sks dog",)
    assert first.request.spec.gpu == "auto" and first.request.grid.enabled
    assert first.request.money.on_finish == "none", "the queue finishes, not its jobs"
    assert first.request.retry_oom == 0 and not first.pull_state_given
    assert second.request.spec.model == "sdxl" and second.request.spec.gpu == "rtx4090"
    assert second.request.grid.epochs == (2, 4) and second.request.grid.seeds == 2
    assert second.request.money.max_dollars == 3.0 and second.request.pull_state
    assert second.pull_state_given
    assert queue.settings.work_dir == "/data/kw"
    assert queue.settings.setup.torch_spec == "skip" and queue.settings.setup.installer == "pip"


def test_a_local_model_file_is_read_beside_the_queue_file(tmp_path: Path) -> None:
    dataset(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "base.safetensors").write_bytes(b"\0" * 64)
    queue = read_queue_file(write(tmp_path, """
[[job]]
name = "a"
model = "sd15"
dataset = "data"
base_model = "models/base.safetensors"
grid = false
"""))  # fmt: skip
    (job,) = queue.jobs
    assert job.request.spec.base_model == str(tmp_path / "models" / "base.safetensors")
    assert not job.request.grid.enabled


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[jobs]]\nname = "a"\n', "unknown table 'jobs'; did you mean 'job'?"),
        ('[[job]]\nname = "a"\nmodel = "sd15"\ndataset = "data"\nepochs = 3\n',
         "unknown key 'epochs'"),
        ('[[job]]\nname = "a"\nmodel = "sd15"\ndataset = "data"\ndatset = "x"\n',
         "did you mean 'dataset'?"),
        ('[defaults]\nmodle = "sd15"\n[[job]]\nname = "a"\n', "[defaults]: unknown key 'modle'"),
        ('[queue]\nworkdir = "/x"\n[[job]]\nname = "a"\n', "did you mean 'work_dir'?"),
        ('[queue]\ninstaller = "conda"\n[[job]]\nname = "a"\n', "installer must be auto, uv or pip"),
        ('[[job]]\nname = "a"\nmodel = "sd15"\n', "job 1 (a) has no dataset"),
        ('[[job]]\nname = "a"\ndataset = "data"\n', "job 1 (a) has no model"),
        ('[[job]]\nmodel = "sd15"\ndataset = "data"\n', "job 1 has no name"),
        ('[[job]]\nname = "a"\nmodel = "sd15"\ndataset = "nowhere"\n', "does not exist"),
        ('[[job]]\nname = "a"\nmodel = "sd15"\ndataset = "data"\nsmoke = "yes"\n',
         "smoke must be true or false, not str"),
        ('[[job]]\nname = "a"\nmodel = "sd15"\ndataset = "data"\nkeep_states = true\n',
         "keep_states must be a whole number"),
        ('[[job]]\nname = "a"\nmodel = "sd15"\ndataset = "data"\nset = [1]\n',
         'set items are "key=value" strings'),
        ('[[job]]\nname = "a"\nmodel = "sd15"\ndataset = "data"\nset = { output_dir = "x" }\n',
         "--set output_dir=... is managed by the run"),
        ('[[job]]\nname = "a"\nmodel = "sd15"\ndataset = "data"\nset = { netwrk_dim = 8 }\n',
         "train_network.py does not have"),
        ('[[job]]\nname = "a/b"\nmodel = "sd15"\ndataset = "data"\n', "path separator"),
        ('[[job]]\nname = "a"\nmodel = "sd99"\ndataset = "data"\n', "sd99"),
        ('[[job]]\nname = "a"\nmodel = "sd15"\ndataset = "data"\ngrid = "epoch=1"\n',
         "--grid: unknown key 'epoch'"),
        ("", "the queue has no job"),
        ("job = 3\n", "'job' must be an array of tables"),
        ("[[job]\n", "not valid TOML"),
    ],
)  # fmt: skip
def test_refused_with_where_and_why(tmp_path: Path, text: str, message: str) -> None:
    dataset(tmp_path)
    err = refused(tmp_path, text)
    assert message in str(err), str(err)
    assert "jobs.toml" in str(err), "the message names the file"


def test_two_jobs_of_one_name_are_refused(tmp_path: Path) -> None:
    dataset(tmp_path)
    err = refused(tmp_path, """
[defaults]
model = "sd15"
dataset = "data"
[[job]]
name = "Shiba"
[[job]]
name = "another"
[[job]]
name = "shiba"
""")  # fmt: skip
    assert "two jobs are named 'shiba': " in err.message
    assert "job 1 (Shiba)" in err.message and "job 3 (shiba)" in err.message


def test_same_looking_non_ascii_names_are_one_name(tmp_path: Path) -> None:
    # "é" written precomposed and as e + combining accent: one file name on most file systems.
    dataset(tmp_path)
    err = refused(tmp_path, (
        '[defaults]\nmodel = "sd15"\ndataset = "data"\n'
        '[[job]]\nname = "caf\u00e9"\n[[job]]\nname = "cafe\u0301"\n'
    ))  # fmt: skip
    assert "two jobs are named" in err.message


def test_a_huge_or_binary_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "jobs.toml"
    big.write_bytes(b"#" * (2 * 1024 * 1024))
    with pytest.raises(UsageError, match="queue file"):
        read_queue_file(big)
    with pytest.raises(UsageError):
        read_queue_file(tmp_path)  # a folder


def test_parse_is_the_same_without_a_file(tmp_path: Path) -> None:
    dataset(tmp_path)
    text = '[[job]]\nname = "a"\nmodel = "sd15"\ndataset = "data"\n'
    parsed = parse_queue(text, tmp_path / "x.toml").jobs
    assert [j.request for j in parsed] == [
        j.request for j in read_queue_file(write(tmp_path, text)).jobs
    ]
