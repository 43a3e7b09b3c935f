"""Values sd-scripts accepts from a config file and rejects only after the models have loaded
(issue #7): unknown optimizer and scheduler names, a warmup with a scheduler that takes none,
learning rates at or below zero, and counts that train nothing. Names are those of the pinned
sd-scripts (kohyawrap/data/optimizers_schedulers.toml says where each comes from)."""

from __future__ import annotations

import pytest

from kohyawrap.validate import check_settings
from tests.fixtures.cli import run_cli
from tests.test_validate import GOOD, SD, XL


def findings(settings, script=SD):
    return {f.code: f for f in check_settings(settings, script=script)}


def errors(settings, script=SD):
    return {
        (f.code, f.subject)
        for f in check_settings(settings, script=script)
        if f.severity == "error"
    }


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("AdamW9bit", "AdamW8bit"),
        ("adam", "Adam"),  # torch.optim is looked up with the case as written
        ("Prodigi", "Prodigy"),
        ("AdEMAMix8bit", "bitsandbytes.optim.AdEMAMix8bit"),  # only the dotted path works
        ("LBFGS", None),  # exists in torch.optim, cannot train the way sd-scripts calls it
        ("dadaptation.DAdaptAdam", "DAdaptAdam"),  # dotted, but caught by the DAdapt branch
    ],
)
def test_an_optimizer_sd_scripts_does_not_know_is_an_error(name, meant):
    found = findings(GOOD | {"optimizer_type": name})
    assert found["optimizer"].severity == "error"
    if meant:
        assert meant in (found["optimizer"].hint or "")


@pytest.mark.parametrize(
    "name",
    [
        "AdamW8bit",
        "adamw8bit",  # sd-scripts' own names in any case
        "PAGEDADAMW",
        "Lion",
        "Adafactor",
        "AdamWScheduleFree",
        "RMSprop",  # torch.optim
        "bitsandbytes.optim.AdEMAMix8bit",  # dotted: imported on the host
        "prodigyopt.Prodigy",
        "",  # unset: AdamW
    ],
)
def test_optimizers_sd_scripts_knows_pass(name):
    settings = GOOD | {"optimizer_type": name}
    if name == "Adafactor":
        settings["learning_rate"] = 1e-4
    assert not {code for code, _ in errors(settings)} & {"optimizer"}


def test_a_dotted_optimizer_outside_the_requirements_is_a_warning():
    found = findings(GOOD | {"optimizer_type": "came_pytorch.CAME"})
    assert found["optimizer-package"].severity == "warning"
    assert "came_pytorch" in found["optimizer-package"].message


def test_dadaptation_needs_a_package_requirements_txt_does_not_install():
    found = findings(GOOD | {"optimizer_type": "DAdaptAdam", "learning_rate": 1.0})
    assert found["optimizer-package"].severity == "warning"
    assert "dadaptation" in found["optimizer-package"].message


@pytest.mark.parametrize(
    ("name", "meant"),
    [("cosine_annealing", "cosine"), ("Cosine", "cosine"), ("linear_warmup", "linear")],
)
def test_a_scheduler_sd_scripts_does_not_know_is_an_error(name, meant):
    found = findings(GOOD | {"lr_scheduler": name})
    assert found["lr-scheduler"].severity == "error"
    assert f"'{meant}'" in (found["lr-scheduler"].hint or "")


@pytest.mark.parametrize(
    "name",
    ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant_with_warmup",
     "inverse_sqrt", "warmup_stable_decay"],
)  # fmt: skip
def test_schedulers_sd_scripts_knows_pass(name):
    assert not errors(GOOD | {"lr_scheduler": name, "lr_warmup_steps": 10})


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"lr_scheduler": "reduce_lr_on_plateau"}, "lr-scheduler"),
        ({"lr_scheduler": "cosine_warmup_with_min_lr"}, "lr-scheduler"),
        ({"lr_scheduler": "cosine_with_min_lr"}, "lr-scheduler-args"),
        ({"lr_scheduler": "piecewise_constant"}, "lr-scheduler-args"),
        ({"lr_scheduler": "adafactor"}, "lr-scheduler"),
    ],
)
def test_schedulers_that_fail_at_this_commit(extra, code):
    assert (code, "lr_scheduler") in errors(GOOD | extra)


def test_schedulers_with_what_they_need_pass():
    assert not errors(
        GOOD | {"lr_scheduler": "cosine_with_min_lr", "lr_scheduler_min_lr_ratio": 0.1}
    )
    assert not errors(
        GOOD | {"lr_scheduler": "piecewise_constant", "lr_scheduler_args": ["step_rules=1:10,0.1"]}
    )


def test_warmup_with_constant_is_an_error_steps_or_ratio():
    assert ("warmup", "lr_warmup_steps") in errors(GOOD | {"lr_warmup_steps": 100})
    assert ("warmup", "lr_warmup_steps") in errors(
        GOOD | {"lr_scheduler": "constant", "lr_warmup_steps": 0.1}
    )
    # sd-scripts' default scheduler is constant, too
    assert ("warmup", "lr_warmup_steps") in errors(GOOD | {"lr_warmup_steps": 5})
    # a ratio that int() truncates to 0 steps of a known length passes, as in sd-scripts
    short = {k: v for k, v in GOOD.items() if k != "max_train_epochs"} | {"max_train_steps": 5}
    assert not errors(short | {"lr_warmup_steps": 0.1})
    assert not errors(GOOD | {"lr_warmup_steps": 0})
    # a custom scheduler and the adafactor scheduler take no warmup either
    custom = GOOD | {"lr_scheduler_type": "torch.optim.lr_scheduler.StepLR", "lr_warmup_steps": 9}
    assert ("warmup", "lr_warmup_steps") in errors(custom)
    adafactor = GOOD | {"optimizer_type": "Adafactor", "lr_scheduler": "cosine"}
    assert ("warmup", "lr_warmup_steps") in errors(adafactor | {"lr_warmup_steps": 10})


def test_a_float_warmup_of_one_or_more_is_a_ratio_not_steps():
    found = findings(GOOD | {"lr_scheduler": "cosine", "lr_warmup_steps": 100.0})
    assert found["warmup"].severity == "error" and "ratio" in found["warmup"].message


def test_schedulefree_optimizers_ignore_the_scheduler():
    assert not errors(
        GOOD
        | {"optimizer_type": "AdamWScheduleFree", "lr_scheduler": "whatever", "lr_warmup_steps": 5}
    )


@pytest.mark.parametrize(
    "extra",
    [
        {"learning_rate": -1e-4},
        {"learning_rate": 0},
        {"unet_lr": -1e-4},
        {"text_encoder_lr": -5e-5},
        {"text_encoder_lr": [1e-5, -1e-5]},
        {"unet_lr": 0, "text_encoder_lr": 0},
        {"learning_rate": 0, "network_train_unet_only": True},
    ],
)
def test_learning_rates_that_train_nothing_or_backwards_are_errors(extra):
    assert any(code == "learning-rate" for code, _ in errors(GOOD | extra))


def test_a_zero_rate_for_one_part_freezes_that_part_and_says_so():
    found = findings(GOOD | {"learning_rate": 1e-4, "text_encoder_lr": 0})
    assert found["learning-rate"].severity == "note"
    assert "text encoder" in found["learning-rate"].message
    # learning_rate is only a fallback when both parts have their own rate
    assert not errors(GOOD | {"learning_rate": 0, "unet_lr": 1e-4, "text_encoder_lr": 1e-5})


def test_adafactor_with_relative_step_ignores_the_learning_rate():
    assert not errors(GOOD | {"optimizer_type": "Adafactor", "learning_rate": 0})
    fixed = GOOD | {"optimizer_args": ["relative_step=False"]}
    assert errors(fixed | {"optimizer_type": "Adafactor", "learning_rate": 0})


@pytest.mark.parametrize(
    "key", ["train_batch_size", "max_train_steps", "max_train_epochs", "gradient_accumulation_steps",
            "network_dim"],
)  # fmt: skip
@pytest.mark.parametrize("value", [0, -3])
def test_counts_below_one_are_errors(key, value):
    settings = {k: v for k, v in GOOD.items() if k != "max_train_epochs"}  # epochs would win
    assert ("count", key) in errors(settings | {key: value})


def test_use_8bit_adam_with_an_optimizer_type_is_an_error():
    assert ("optimizer", "use_8bit_adam") in errors(
        GOOD | {"use_8bit_adam": True, "optimizer_type": "AdamW"}
    )


def test_sdxl_uses_the_same_rules():
    assert ("optimizer", "optimizer_type") in errors(GOOD | {"optimizer_type": "AdamW9bit"}, XL)


ISSUE_CONFIG = """\
pretrained_model_name_or_path = "runwayml/stable-diffusion-v1-5"
train_data_dir = "dataset"
resolution = "512"
caption_extension = ".txt"
network_module = "networks.lora"
max_train_epochs = 10
optimizer_type = "AdamW9bit"
lr_scheduler = "cosine_annealing"
"""


def test_config_check_reports_the_three_late_failures_of_the_issue(tmp_path, capsys):
    bad_names = tmp_path / "names.toml"
    bad_names.write_text(ISSUE_CONFIG, encoding="utf-8")
    code, out = run_cli(["config", "check", str(bad_names)], capsys)
    assert code == 2 and "AdamW9bit" in out and "cosine_annealing" in out
    assert "'AdamW8bit'" in out and "'cosine'" in out
    warmup = tmp_path / "warmup.toml"
    warmup.write_text(
        ISSUE_CONFIG.replace("AdamW9bit", "AdamW8bit").replace("cosine_annealing", "constant")
        + "lr_warmup_steps = 100\n",
        encoding="utf-8",
    )
    code, out = run_cli(["config", "check", str(warmup)], capsys)
    assert code == 2 and "does not require num_warmup_steps" in out


def test_config_render_refuses_them_before_writing(tmp_path, capsys):
    out_dir = tmp_path / "run"
    args = ["config", "render", "--gpu", "rtx4090", "--model", "sd15",
            "--dataset", str(tmp_path / "later"), "-o", str(out_dir)]  # fmt: skip
    for bad in ("optimizer_type=AdamW9bit", "lr_scheduler=cosine_annealing", "lr_warmup_steps=50",
                "learning_rate=-1e-4", "max_train_epochs=0", "train_batch_size=-2"):  # fmt: skip
        code, out = run_cli([*args, "--set", bad], capsys)
        assert code == 2, bad
        assert bad.split("=")[0] in out and "Traceback" not in out
    assert not out_dir.exists()
