"""Values typed on the command line that used to be accepted silently (issue #7, issue #12): each
is refused before anything is rendered, with a message about the value itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.cli import run_cli
from tests.test_forecast import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("values") / "data")


def _plan(data: Path, *extra: str) -> list[str]:
    return ["plan", "--model", "sd15", "--dataset", str(data), *extra]


def _render(data: Path, out: Path, *extra: str) -> list[str]:
    return ["config", "render", "--model", "sd15", "--dataset", str(data), "-o", str(out), *extra]


@pytest.mark.parametrize(
    ("extra", "option", "needle"),
    [
        (["--gpu", "rtx4090", "--price", "-3"], "--price", "0 or more"),
        (["--gpu", "rtx4090", "--price", "nan"], "--price", "not a finite number"),
        (["--gpu", "rtx4090", "--bandwidth", "0"], "--bandwidth", "more than 0"),
        (["--vram", "-5"], "--vram", "more than 0 GB"),
        (["--vram", "0"], "--vram", "more than 0 GB"),
        (["--vram", "inf"], "--vram", "not a finite number"),
        (["--gpu", "rtx4090", "--vram", "-5"], "--vram", "more than 0 GB"),
        (["--gpu", "rtx4090", "--name", ""], "--name", "empty"),
        (["--gpu", "rtx4090", "--name", "   "], "--name", "empty"),
        (["--gpu", "rtx4090", "--name", "runs/my_lora"], "--name", "path separator"),
        (["--gpu", "rtx4090", "--name", "a\nb"], "--name", "control"),
        (["--gpu", "rtx4090", "--name", ".hidden"], "--name", "starts with"),
        (["--gpu", "rtx4090", "--name", "x" * 201], "--name", "longer than 200 bytes"),
        (["--gpu", "rtx4090", "--caption-extension", "txt"], "--caption-extension", "txt"),
        (["--gpu", "rtx4090", "--trigger", ""], "--trigger", "empty"),
        (["--gpu", "rtx4090", "--trigger", "sks --n ugly"], "--trigger", " --"),
    ],
)
def test_plan_refuses_the_value(
    data: Path, extra: list[str], option: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(_plan(data, *extra), capsys)
    assert code == 2, out
    assert option in out and needle in out, out
    assert "preset" not in out.split("Error")[-1]  # about the value, not a preset name
    assert "Traceback" not in out


def test_the_old_vram_message_named_a_preset(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(_plan(data, "--vram", "-5"), capsys)
    assert code == 2 and "vram--5" not in out


@pytest.mark.parametrize(
    "name",
    ["my_lora", "我的风格-v2", "Käthe's LoRA", "sks dog 1.5"],
    ids=["ascii", "cjk", "quote", "dots"],
)
def test_names_people_use_are_accepted(
    data: Path, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, text = run_cli(_render(data, out, "--gpu", "rtx4090", "--name", name), capsys)
    assert code == 0, text
    assert f'output_name = "{name}"' in (out / "training_config.toml").read_text(encoding="utf-8")


def test_config_render_uses_the_same_types(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, text = run_cli(_render(data, out, "--vram", "-5"), capsys)
    assert code == 2 and "--vram" in text and "more than 0 GB" in text
    assert not out.exists()


def test_presets_show_refuses_a_bad_vram(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(["presets", "show", "rtx4090", "--model", "sdxl", "--vram", "-1"], capsys)
    assert code == 2 and "more than 0 GB" in out


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["batch_size=4"], "train_batch_size"),  # issue #12: presets show listed it
        (["lr=1e-4"], "learning_rate"),
        (["learning_rate=-1e-4"], "negative"),
        (["optimizer_type=AdamW9bit"], "AdamW8bit"),
        (["network_dim=0"], "network_dim"),
    ],
)
def test_set_is_validated_the_same_in_presets_show_plan_and_render(
    data: Path, sets: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [a for s in sets for a in ("--set", s)]
    commands = [
        ["presets", "show", "rtx4090", "--model", "sd15", *flags],
        _plan(data, "--gpu", "rtx4090", *flags),
        _render(data, tmp_path / "run", "--gpu", "rtx4090", *flags),
    ]
    for args in commands:
        code, out = run_cli(args, capsys)
        assert code == 2, (args[:2], out)
        assert needle in out, (args[:2], out)
    assert not (tmp_path / "run").exists()


def test_dataset_lint_refuses_a_caption_extension_without_a_dot(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(
        ["dataset", "lint", str(data), "--model", "sd15", "--caption-extension", "txt"], capsys
    )
    assert code == 2 and "--caption-extension" in out


@pytest.mark.parametrize("value", ["abc", "0", "-512", "512,abc", "512,768,1024"])
def test_dataset_lint_resolution_message_is_about_the_value(
    data: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(
        ["dataset", "lint", str(data), "--model", "sd15", "--resolution", value], capsys
    )
    assert code == 2 and "--resolution" in out and "presets/" not in out, out


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--max-dollars", "-1", "more than 0 dollars"),
        ("--max-dollars", "0", "more than 0 dollars"),
        ("--max-hours", "-0.5", "more than 0 hours"),
        ("--poll", "0", "more than 0 seconds"),
        ("--poll", "inf", "not a finite number"),
        ("--max-hours", "two", "not a number"),
    ],
)
def test_the_types_train_and_attach_use(option: str, value: str, needle: str) -> None:
    # train/attach are not in this module's reach; the same types on a real click command.
    import click
    from click.testing import CliRunner

    from kohyawrap.cli.types import DOLLARS, HOURS, SECONDS

    @click.command()
    @click.option("--max-dollars", type=DOLLARS)
    @click.option("--max-hours", type=HOURS)
    @click.option("--poll", type=SECONDS)
    def command(max_dollars: float | None, max_hours: float | None, poll: float | None) -> None:
        click.echo(f"{max_dollars} {max_hours} {poll}")

    result = CliRunner().invoke(command, [option, value])
    assert result.exit_code == 2 and option in result.output and needle in result.output
    ok = CliRunner().invoke(command, ["--max-dollars", "2.5", "--max-hours", "1", "--poll", "0.5"])
    assert ok.exit_code == 0 and ok.output.strip() == "2.5 1.0 0.5"
