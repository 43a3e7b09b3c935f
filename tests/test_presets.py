"""Presets: shipped files, their sources, resolution order, user presets with extends."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kohyawrap.errors import ConfigError, UsageError
from kohyawrap.presets import load_catalog, parse_override, pick_tier, read_toml, resolve
from kohyawrap.resources import presets_dir

SOURCES = Path(__file__).resolve().parent.parent / "docs" / "sources.md"
PACKAGE = Path(__file__).resolve().parent.parent / "kohyawrap"

GPUS = (
    "rtx3060-12gb",
    "rtx4060ti-16gb",
    "rtx4080-16gb",
    "rtx3090",
    "rtx4090",
    "rtx-a6000",
    "l4",
    "a10g",
    "a100-40gb",
    "a100-80gb",
    "h100",
)
MODELS = ("sd15", "sd2", "sdxl", "flux-dev", "flux-schnell", "chroma", "sd35-large", "sd35-medium")


@pytest.fixture(scope="module")
def catalog():  # the shipped presets only: an empty user folder
    return load_catalog(user_dir=Path("/nonexistent-kohyawrap-user-dir"))


def test_every_required_gpu_and_model_is_shipped(catalog):
    assert set(GPUS) <= set(catalog.gpus)
    assert set(MODELS) <= set(catalog.models)
    for name in GPUS:
        gpu = catalog.gpus[name]
        assert gpu.vram_gb >= 12 and gpu.bf16 is True
        assert gpu.price_range[0] <= gpu.price_per_hour <= gpu.price_range[1]
        assert set(gpu.speed) == {catalog.models[m].family for m in MODELS}


def _numbers(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                yield from _numbers(item, f"{prefix}{key}[{i}].")
        elif isinstance(value, (int, float)) or (
            isinstance(value, list) and value and isinstance(value[0], (int, float))
        ):
            yield f"{prefix}{key}"  # numbers, flags and number lists (not names, patterns)


@pytest.mark.parametrize(
    "path",
    sorted((presets_dir() / "gpus").glob("*.toml"))
    + sorted((presets_dir() / "models").glob("*.toml"))
    + [presets_dir() / "tiers.toml"],
    ids=lambda p: p.name,
)
def test_every_number_in_a_preset_file_has_a_source(path):
    data, comments = read_toml(path)
    missing = [key for key in _numbers(data) if not comments.get(key)]
    assert missing == [], f"{path.name}: numbers without a source comment: {missing}"
    # Unmeasured numbers say so; others name a public source: a [n] key of docs/sources.md.
    keys = source_keys()
    for key in _numbers(data):
        text = comments[key]
        cited = re.findall(r"\[(\d+)\]", text)
        assert set(cited) <= keys, f"{path.name} {key}: no such entry in docs/sources.md: {text}"
        said = ("estimate", "derived", "measured")
        assert cited or any(w in text for w in said), f"{path.name} {key}: {text}"


def source_keys() -> set[str]:
    """The [n] keys of docs/sources.md; each entry must link somewhere a reader can open."""
    keys = set()
    for line in SOURCES.read_text(encoding="utf-8").splitlines():
        entry = re.match(r"^\| \[(\d+)\] \| (.*)$", line)
        if entry:
            assert "https://" in entry.group(2) or "tests/data/" in entry.group(2), line
            keys.add(entry.group(1))
    return keys


def test_sources_are_numbered_once_and_all_used():
    text = SOURCES.read_text(encoding="utf-8")
    numbered = re.findall(r"^\| \[(\d+)\] \|", text, flags=re.MULTILINE)
    assert numbered == [str(n) for n in range(1, len(numbered) + 1)]
    cited = set()
    readable = [
        *presets_dir().rglob("*.toml"),
        *SOURCES.parent.glob("*.md"),
        *PACKAGE.rglob("*.py"),
    ]
    for path in readable:
        if path != SOURCES:
            cited |= set(re.findall(r"\[(\d+)\]", path.read_text(encoding="utf-8")))
    assert set(numbered) - cited == set(), "entries of docs/sources.md that nothing cites"


def test_tiers_follow_the_published_recipes(catalog):
    sdxl = {
        t.min_vram_gb: dict((s.key, s.value) for s in t.settings)
        for t in catalog.rules.tiers["sdxl"]
    }
    assert sdxl[8]["cache_text_encoder_outputs"] and sdxl[8]["network_train_unet_only"]
    assert sdxl[24]["gradient_checkpointing"] is True  # ON for 24 GB SDXL
    assert sdxl[40]["gradient_checkpointing"] is False  # OFF for A100/H100
    sd15 = {
        t.min_vram_gb: dict((s.key, s.value) for s in t.settings)
        for t in catalog.rules.tiers["sd15"]
    }
    assert sd15[16]["gradient_checkpointing"] is False
    assert pick_tier(catalog.rules.tiers["sdxl"], 23.9).min_vram_gb == 16
    assert (
        pick_tier(catalog.rules.tiers["sdxl"], 6).min_vram_gb == 8
    )  # below every tier: the lowest


def test_resolution_order_and_origins(catalog):
    r = resolve(catalog, "rtx4090", "sdxl", overrides=(("network_dim", 64),))
    by_key = {s.key: s for s in r.settings}
    assert r.script == "sdxl_train_network.py"
    assert by_key["train_batch_size"].origin == "tier sdxl >= 24 GB"
    assert by_key["network_dim"].value == 64 and by_key["network_dim"].origin == "--set"
    assert by_key["mixed_precision"].value == "bf16" and by_key[
        "mixed_precision"
    ].origin.startswith("gpu rtx4090")
    assert by_key["resolution"].value == "1024"  # a string, as --config_file needs
    assert by_key["network_module"].value == "networks.lora"
    assert "no_half_vae" not in by_key
    assert "[10]" in by_key["gradient_checkpointing"].source  # docs/sources.md


def test_sdxl_in_fp16_gets_no_half_vae(catalog):
    r = resolve(catalog, "rtx4090", "sdxl", overrides=(("mixed_precision", "fp16"),))
    assert r.get("no_half_vae") is True
    assert (
        resolve(catalog, "rtx4090", "sd15", overrides=(("mixed_precision", "fp16"),)).get(
            "no_half_vae"
        )
        is None
    )


def test_unknown_gpu_by_vram_uses_the_tier_and_fp16(catalog):
    r = resolve(catalog, "vram-20", "sdxl")
    assert r.gpu.vram_gb == 20 and not r.gpu.known
    assert r.tier is not None and r.tier.min_vram_gb == 16
    assert r.get("mixed_precision") == "fp16" and r.get("no_half_vae") is True
    assert resolve(catalog, "rtx4090", "sdxl", vram_gb=80).get("train_batch_size") == 8


def test_smoke_runs_on_cpu(catalog):
    values = resolve(catalog, "rtx4090", "sdxl", smoke=True).values()
    assert values["mixed_precision"] == "no" and values["optimizer_type"] == "AdamW"
    assert values["resolution"] == "128" and values["max_train_steps"] == 4
    assert not values["cache_latents_to_disk"] and not values["cache_text_encoder_outputs"]
    assert "max_train_epochs" not in values and "no_half_vae" not in values


def test_unknown_names_suggest_the_right_one(catalog):
    with pytest.raises(UsageError) as err:
        catalog.gpu("rtx409")
    assert "rtx4090" in str(err.value)
    with pytest.raises(UsageError) as err:
        catalog.model("sdx")
    assert "sdxl" in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("network_dim=16", ("network_dim", 16)),
        ("learning_rate=1e-4", ("learning_rate", 1e-4)),
        ("resolution=768", ("resolution", "768")),  # sd-scripts reads resolution as a string
        ("resolution=768,1024", ("resolution", "768,1024")),
        ('resolution="512"', ("resolution", "512")),
        ("gradient_checkpointing=true", ("gradient_checkpointing", True)),
        (
            'network_args=["conv_dim=4", "conv_alpha=1"]',
            ("network_args", ["conv_dim=4", "conv_alpha=1"]),
        ),
        ("lr_scheduler=cosine", ("lr_scheduler", "cosine")),  # not TOML: kept as text
        (" seed = 7 ", ("seed", 7)),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_parse_override_needs_key_and_value():
    with pytest.raises(UsageError):
        parse_override("network_dim")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_user_presets_extend_shipped_ones(tmp_path):
    _write(
        tmp_path / "gpus" / "t4.toml",
        'extends = "rtx4060ti-16gb"\n[gpu]\ntitle = "NVIDIA T4"\nmatch = ["Tesla T4"]\n'
        "bf16 = false  # Turing has no bf16 [30]\nprice_per_hour = 0.2  # estimate\n",
    )
    _write(
        tmp_path / "gpus" / "rtx4090.toml",
        'extends = "rtx4090"\n[gpu]\nprice_per_hour = 0.30  # my price\n',
    )
    _write(
        tmp_path / "models" / "pony.toml",
        'extends = "sdxl"\n[model]\ntitle = "Pony"\n[train]\nunet_lr = 5e-5  # mine\n',
    )
    catalog = load_catalog(user_dir=tmp_path)
    t4 = catalog.gpus["t4"]
    assert (t4.vram_gb, t4.bf16, t4.price_per_hour, t4.title) == (16, False, 0.2, "NVIDIA T4")
    assert t4.speed["sdxl"] == catalog.gpus["rtx4060ti-16gb"].speed["sdxl"]
    assert t4.sources["gpu.bf16"].startswith("Turing")
    assert catalog.gpus["rtx4090"].price_per_hour == 0.30 and catalog.gpus["rtx4090"].vram_gb == 24
    r = resolve(catalog, "t4", "pony")
    assert r.script == "sdxl_train_network.py"
    assert r.get("mixed_precision") == "fp16" and r.get("no_half_vae") is True
    assert r.get("unet_lr") == 5e-5 and r.get("train_batch_size") == 2  # sdxl's 16 GB tier


def test_user_preset_extending_nothing_known_is_a_clear_error(tmp_path):
    _write(tmp_path / "gpus" / "mine.toml", 'extends = "rtx4909"\n')
    with pytest.raises(ConfigError) as err:
        load_catalog(user_dir=tmp_path)
    assert "rtx4090" in str(err.value) and "mine.toml" in str(err.value)


def test_broken_user_preset_is_a_config_error(tmp_path):
    _write(tmp_path / "gpus" / "bad.toml", "[gpu\nvram_gb = 24\n")
    with pytest.raises(ConfigError):
        load_catalog(user_dir=tmp_path)
    _write(tmp_path / "gpus" / "bad.toml", '[gpu]\nvram_gb = "lots"\n')
    with pytest.raises(ConfigError) as err:
        load_catalog(user_dir=tmp_path)
    assert "vram_gb" in str(err.value)


def test_model_files_and_sample_tables_are_checked(tmp_path):
    _write(
        tmp_path / "models" / "my-chroma.toml",
        'extends = "chroma"\n[files.clip_l]\nrepo = "a/b"\nfile = "c"\ngated = false\n',
    )
    with pytest.raises(ConfigError) as err:
        load_catalog(user_dir=tmp_path)
    assert "clip_l" in str(err.value) and "my-chroma.toml" in str(err.value)
    _write(
        tmp_path / "models" / "my-chroma.toml",
        'extends = "chroma"\n[files.t5xxl]\nsize_gb = "big"\n',
    )
    with pytest.raises(ConfigError, match="size_gb"):
        load_catalog(user_dir=tmp_path)
    _write(tmp_path / "models" / "my-chroma.toml", 'extends = "chroma"\nplan = 3\n')
    with pytest.raises(ConfigError, match="plan"):
        load_catalog(user_dir=tmp_path)
    _write(
        tmp_path / "models" / "my-chroma.toml",
        'extends = "chroma"\n[files.t5xxl]\nfile = "t5xxl_fp8_e4m3fn.safetensors"\n'
        "size_gb = 4.89  # HF\n[sample]\nsteps = 30  # mine\n",
    )
    mine = load_catalog(user_dir=tmp_path).model("my-chroma")
    assert mine.files["t5xxl"].repo == "comfyanonymous/flux_text_encoders"  # merged from chroma
    assert (mine.files["t5xxl"].file, mine.files["t5xxl"].size_gb) == (
        "t5xxl_fp8_e4m3fn.safetensors",
        4.89,
    )
    assert (mine.sample.steps, mine.sample.cfg, mine.family) == (30, 4.0, "chroma")


def test_flux_tiers_follow_the_sd_scripts_table(catalog):
    flux = {
        t.min_vram_gb: dict((s.key, s.value) for s in t.settings)
        for t in catalog.rules.tiers["flux"]
    }
    # docs/flux_train_network.md:284-290, all "with --fp8_base"
    assert flux[24]["train_batch_size"] == 2 and "blocks_to_swap" not in flux[24]
    assert flux[12]["blocks_to_swap"] == 16 and flux[12]["optimizer_type"] == "AdamW8bit"
    assert (flux[10]["blocks_to_swap"], flux[8]["blocks_to_swap"]) == (22, 28)
    assert all(flux[v]["fp8_base"] for v in (8, 10, 12, 16, 24))
    assert not flux[40]["fp8_base"] and not flux[80]["gradient_checkpointing"]
    assert all("split_mode" not in t for t in flux.values())
    assert resolve(catalog, "rtx4090", "flux-schnell").tier.label == "tier flux >= 24 GB"
