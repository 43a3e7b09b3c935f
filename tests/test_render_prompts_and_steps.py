"""What the user typed takes effect (issue #7/#8): --set max_train_steps=N decides the length
(the preset's epochs are dropped, and that is said), --set sample_prompts=FILE is the run's prompt
file (copied with the configs, bounded, sd-scripts' syntax kept), and generated sample prompts
name the trigger and class word, not the LoRA's file name."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import tomlkit

from kohyawrap.fileio import MAX_TEXT_FILE_BYTES
from kohyawrap.launcher.runplan import spec_from_json, spec_to_json
from kohyawrap.presets import load_catalog, resolve
from kohyawrap.render import findings, render_run
from tests.fixtures.cli import run_cli
from tests.fixtures.images import write_jpeg
from tests.test_forecast import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("prompts") / "data")  # 10_sks dog, 5_zkw cat


def _render(data: Path, out: Path, *extra: str, gpu: str = "rtx4090") -> list[str]:
    return ["config", "render", "--gpu", gpu, "--model", "sd15", "--dataset", str(data),
            "-o", str(out), *extra]  # fmt: skip


def _config(out: Path) -> dict:
    return tomlkit.parse((out / "training_config.toml").read_text(encoding="utf-8")).unwrap()


def _flat(out: Path) -> dict:
    return {k: v for table in _config(out).values() for k, v in table.items()}


def _prompt_lines(out: Path, name: str = "sample_prompts.txt") -> list[str]:
    text = (out / name).read_text(encoding="utf-8")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


# --- max_train_steps ------------------------------------------------------------------------


def test_a_users_step_count_drops_the_presets_epochs(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, text = run_cli(_render(data, out, "--set", "max_train_steps=300"), capsys)
    assert code == 0, text
    flat = _flat(out)
    assert flat["max_train_steps"] == 300 and "max_train_epochs" not in flat
    assert "max_train_epochs" in text and "dropped" in text  # and it says so

    code, text = run_cli(
        ["plan", "--gpu", "rtx4090", "--model", "sd15", "--dataset", str(data),
         "--set", "max_train_steps=300", "--json"], capsys,
    )  # fmt: skip
    plan = json.loads(text)
    assert code == 0 and plan["steps"]["total_steps"] == 300
    assert plan["steps"]["basis"] == "max_train_steps"
    assert any(f["code"] == "epochs-dropped" for f in plan["config_findings"])


def test_both_given_keeps_both_and_epochs_win_as_in_sd_scripts() -> None:
    catalog = load_catalog()
    both = resolve(catalog, "rtx4090", "sd15",
                   overrides=(("max_train_steps", 300), ("max_train_epochs", 4)))  # fmt: skip
    assert both.get("max_train_epochs") == 4 and both.get("max_train_steps") == 300
    assert not both.notes
    steps_only = resolve(catalog, "rtx4090", "sd15", overrides=(("max_train_steps", 300),))
    assert steps_only.get("max_train_epochs") is None
    assert [n.code for n in steps_only.notes] == ["epochs-dropped"]


def test_presets_show_says_the_epochs_were_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(
        ["presets", "show", "rtx4090", "--model", "sd15", "--set", "max_train_steps=300"], capsys
    )
    assert code == 0 and "dropped" in text


def test_zero_steps_is_refused(data: Path, tmp_path: Path, capsys) -> None:
    code, text = run_cli(_render(data, tmp_path / "run", "--set", "max_train_steps=0"), capsys)
    assert code == 2 and "nothing is trained" in text


# --- --set sample_prompts=FILE ----------------------------------------------------------------

TXT = "# my prompts\nsks dog on a skateboard --w 512 --h 768 --d 7\n\n一只 sks dog 在雪地里 --n blurry\n"


def test_the_users_prompt_file_is_used_and_travels_with_the_configs(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "my prompts.txt"
    mine.write_text(TXT, encoding="utf-8")
    out = tmp_path / "run"
    code, text = run_cli(_render(data, out, "--set", f"sample_prompts={mine}"), capsys)
    assert code == 0, text
    assert (out / "sample_prompts.txt").read_text(encoding="utf-8") == TXT  # byte for byte
    assert _flat(out)["sample_prompts"] == "sample_prompts.txt"  # the copy, beside the config

    code, text = run_cli(
        ["plan", "--gpu", "rtx4090", "--model", "sd15", "--dataset", str(data),
         "--set", f"sample_prompts={mine}", "--json"], capsys,
    )  # fmt: skip
    plan = json.loads(text)
    sampling = next(s for s in plan["stages"] if s["name"] == "sampling")
    assert sampling["basis"].startswith("10 sample images")  # 2 prompts x (10 epochs / every 2)


@pytest.mark.parametrize(
    ("name", "text", "count"),
    [
        ("p.toml", '[prompt]\nwidth = 512\n[[prompt.subset]]\nprompt = "sks dog"\n'
                   '[[prompt.subset]]\nprompt = "sks dog, beach"\n', 2),
        ("p.json", json.dumps([{"prompt": "sks dog", "width": 512}, "sks dog --w 512"]), 2),
    ],
)  # fmt: skip
def test_toml_and_json_prompt_files_keep_their_format(
    data: Path, tmp_path: Path, name: str, text: str, count: int, capsys
) -> None:
    mine = tmp_path / name
    mine.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    code, msg = run_cli(_render(data, out, "--set", f"sample_prompts={mine}"), capsys)
    assert code == 0, msg
    copied = "sample_prompts" + mine.suffix
    assert (out / copied).read_text(encoding="utf-8") == text
    assert _flat(out)["sample_prompts"] == copied
    assert not (out / "sample_prompts.txt").exists()


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("p.md", "sks dog\n", ".txt, .toml or .json"),
        ("p.txt", "# only a comment\n\n", "no prompt"),
        ("p.toml", "[prompt]\nwidth = 512\n", "[[prompt.subset]]"),
        ("p.toml", "not = [toml\n", "not valid TOML"),
        ("p.json", '{"prompt": "sks dog"}', "a list"),
        ("p.json", "[1, 2]", "a list"),
        ("p.txt", None, "refused"),  # over the size limit
        ("missing.txt", "", "cannot read"),
    ],
)
def test_prompt_files_sd_scripts_cannot_use_are_refused(
    data: Path, tmp_path: Path, name: str, content: str | None, needle: str, capsys
) -> None:
    mine = tmp_path / name
    if content is None:
        with open(mine, "wb") as f:
            f.truncate(MAX_TEXT_FILE_BYTES + 1)
    elif name != "missing.txt":
        mine.write_text(content, encoding="utf-8")
    out = tmp_path / "run"
    code, text = run_cli(_render(data, out, "--set", f"sample_prompts={mine}"), capsys)
    assert code == 2 and needle in text and name in text, text
    assert not out.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="devices are POSIX")
def test_a_device_as_prompt_file_is_refused(data: Path, tmp_path: Path, capsys) -> None:
    link = tmp_path / "prompts.txt"
    link.symlink_to("/dev/zero")  # a .txt name does not make it a file
    code, text = run_cli(_render(data, tmp_path / "run", "--set", f"sample_prompts={link}"), capsys)
    assert code == 2 and "not a regular file" in text


def test_prompts_with_sampling_switched_off_are_refused(data: Path, tmp_path: Path, capsys) -> None:
    mine = tmp_path / "p.txt"
    mine.write_text("sks dog\n", encoding="utf-8")
    code, text = run_cli(
        _render(data, tmp_path / "run", "--set", f"sample_prompts={mine}",
                "--set", "sample_every_n_epochs=0"), capsys,
    )  # fmt: skip
    assert code == 2 and "sample_every_n_epochs" in text


def test_a_relative_prompt_file_is_read_from_the_current_folder(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("p.txt").write_text("sks dog\n", encoding="utf-8")
    code, text = run_cli(_render(data, Path("run"), "--set", "sample_prompts=p.txt"), capsys)
    assert code == 0, text
    assert (tmp_path / "run" / "sample_prompts.txt").read_text(encoding="utf-8") == "sks dog\n"


# --- generated prompts ------------------------------------------------------------------------


def test_prompts_name_the_datasets_concepts_not_the_file_name(data: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    code, text = run_cli(_render(data, out, "--name", "my_lora"), capsys)
    assert code == 0, text
    lines = _prompt_lines(out)
    assert lines and not any("my lora" in ln or "my_lora" in ln for ln in lines)
    assert any("sks dog" in ln for ln in lines) and any("zkw cat" in ln for ln in lines)
    assert all("--w 512 --h 512" in ln for ln in lines)  # sized like the training resolution


def test_one_concept_gets_several_scenes(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    for i in range(2):
        write_jpeg(data / "20_小狗 dog" / f"{i}.jpg", (512, 512), seed=i)
    out = tmp_path / "run"
    code, text = run_cli(_render(data, out), capsys)
    assert code == 0, text
    lines = _prompt_lines(out)
    assert len(lines) >= 3 and all(ln.count("小狗 dog") == 1 for ln in lines)
    assert len({ln.split(" --")[0] for ln in lines}) == len(lines)  # different scenes


def test_explicit_trigger_and_class_word_win(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, text = run_cli(_render(data, out, "--trigger", "ohwx", "--class-word", "man"), capsys)
    assert code == 0, text
    lines = _prompt_lines(out)
    assert lines and all("ohwx man" in ln for ln in lines) and not any("sks" in ln for ln in lines)


def test_sdxl_prompts_are_sized_for_sdxl(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, text = run_cli(
        ["config", "render", "--gpu", "rtx4090", "--model", "sdxl", "--dataset", str(data),
         "-o", str(out)], capsys,
    )  # fmt: skip
    assert code == 0, text
    assert all("--w 1024 --h 1024" in ln for ln in _prompt_lines(out))


def test_without_a_dataset_or_trigger_it_warns(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, text = run_cli(_render(tmp_path / "later", out), capsys)
    assert code == 0 and "--trigger" in text


def test_the_spec_records_prompts_so_a_run_re_renders_byte_for_byte(tmp_path: Path) -> None:
    from kohyawrap.models import RunSpec

    spec = RunSpec(
        gpu="rtx4090", model="sd15", base_model="b", output_name="x",
        prompt_subjects=("sks dog",), sample_prompts_file="sample_prompts.json",
        sample_prompts_text='["sks dog"]',
    )  # fmt: skip
    first = render_run(spec)
    again = render_run(spec_from_json(json.loads(json.dumps(spec_to_json(spec)))))
    assert first.files == again.files and first.inputs_hash == again.inputs_hash
    assert first.files["sample_prompts.json"] == '["sks dog"]'
    assert not [f for f in findings(first) if "--trigger" in f.message]
