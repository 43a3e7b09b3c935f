"""Model files of a run: what the user typed -> typed files with shared host paths, and the host
script that fetches them, run for real on LocalHost against the fake Hugging Face hub."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from kohyawrap.errors import RemoteCommandError, UsageError
from kohyawrap.hosts.local import LocalHost
from kohyawrap.launcher.scripts import parse_kv, render_script
from kohyawrap.models_fetch import (
    BASE_KEY,
    FetchFile,
    config_paths,
    download_gb,
    expected_gb,
    fetch_plan,
    needs_token,
    render_downloads,
    render_paths,
    script_values,
)
from kohyawrap.presets import load_catalog
from tests.fixtures.hub import FakeHub

CATALOG = load_catalog(user_dir=Path("/nonexistent-kohyawrap-user-dir"))
MODELS = "/root/kohyawrap/models"


def plan(model: str, **choices: str) -> tuple[FetchFile, ...]:
    return fetch_plan(CATALOG.model(model), choices, MODELS)


def by_key(files: tuple[FetchFile, ...]) -> dict[str, FetchFile]:
    return {f.key: f for f in files}


# ---------------------------------------------------------------------------------------------
# The plan of files


def test_flux_dev_defaults_are_the_documented_files():
    files = by_key(plan("flux-dev"))
    assert list(files) == [BASE_KEY, "clip_l", "t5xxl", "ae"]
    base = files[BASE_KEY]
    assert (base.kind, base.source, base.filename) == (
        "hf",
        "black-forest-labs/FLUX.1-dev",
        "flux1-dev.safetensors",
    )
    assert base.gated and base.size_gb == 23.8
    assert files["t5xxl"].source == "comfyanonymous/flux_text_encoders"
    assert files["t5xxl"].filename == "t5xxl_fp16.safetensors" and files["t5xxl"].size_gb == 9.79
    assert files["clip_l"].remote_path == (
        f"{MODELS}/hf-files/comfyanonymous--flux_text_encoders--clip_l.safetensors"
    )
    assert download_gb(files.values()) == pytest.approx(23.8 + 0.246 + 9.79 + 0.335)
    assert needs_token(files.values())


def test_one_ae_is_shared_by_every_flux_family_and_chroma_loads_no_clip_l():
    aes = {by_key(plan(m))["ae"].remote_path for m in ("flux-dev", "flux-schnell", "chroma")}
    assert len(aes) == 1
    chroma = by_key(plan("chroma"))
    assert list(chroma) == [BASE_KEY, "t5xxl", "ae"]
    assert not needs_token(chroma.values()) and not needs_token(plan("flux-schnell"))
    t5 = {by_key(plan(m))["t5xxl"].remote_path for m in ("flux-dev", "flux-schnell", "chroma")}
    assert len(t5) == 1


def test_sd35_fetches_its_three_text_encoders_from_the_gated_release():
    files = by_key(plan("sd35-large"))
    assert list(files) == [BASE_KEY, "clip_l", "clip_g", "t5xxl"]
    assert all(
        f.gated and f.source == "stabilityai/stable-diffusion-3.5-large" for f in files.values()
    )
    assert files["clip_g"].filename == "text_encoders/clip_g.safetensors"
    assert files["clip_g"].remote_path.endswith(
        "stabilityai--stable-diffusion-3.5-large--text_encoders-clip_g.safetensors"
    )
    medium = by_key(plan("sd35-medium"))
    assert medium[BASE_KEY].filename == "sd3.5_medium.safetensors"


def test_config_paths_fill_the_spec():
    base, companions = config_paths(plan("flux-dev"))
    assert base.endswith("black-forest-labs--FLUX.1-dev--flux1-dev.safetensors")
    assert [k for k, _ in companions] == ["clip_l", "t5xxl", "ae"]
    assert all(p.startswith(MODELS + "/hf-files/") for _, p in companions)


def test_user_choices_url_upload_and_repo_files(tmp_path):
    local = tmp_path / "模型 文件 $(touch pwned).safetensors"
    local.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    files = by_key(
        plan(
            "flux-dev",
            pretrained_model_name_or_path="hf://Kijai/flux-fp8/flux1-dev-fp8.safetensors",
            clip_l=str(local),
            t5xxl="https://example.com/te/t5xxl_fp8_e4m3fn.safetensors?download=1",
            ae="black-forest-labs/FLUX.1-dev/ae.safetensors",
        )
    )
    base = files[BASE_KEY]
    assert (base.kind, base.source, base.filename, base.size_gb, base.gated) == (
        "hf",
        "Kijai/flux-fp8",
        "flux1-dev-fp8.safetensors",
        None,
        False,
    )
    upload = files["clip_l"]
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    assert (upload.kind, upload.local_sha256, upload.source) == ("upload", digest, str(local))
    # Host names keep the laptop's letters (names follow the laptop's file system), not $ ( ).
    assert (
        upload.remote_path == f"{MODELS}/uploads/{digest[:16]}-模型-文件-touch-pwned-.safetensors"
    )
    url = files["t5xxl"]
    assert url.kind == "url" and url.filename == "t5xxl_fp8_e4m3fn.safetensors"
    assert url.remote_path.startswith(f"{MODELS}/urls/") and "?" not in url.remote_path
    assert files["ae"].source == "black-forest-labs/FLUX.1-dev" and files["ae"].size_gb is None


@pytest.mark.parametrize(
    ("model", "choices", "message"),
    [
        ("chroma", {"clip_l": "a/b/clip_l.safetensors"}, "loads no --clip-l"),
        ("flux-dev", {"clip_g": "a/b/clip_g.safetensors"}, "loads no --clip-g"),
        ("flux-dev", {"t5xxl": "comfyanonymous/flux_text_encoders"}, "names a repo, not a file"),
        ("flux-dev", {BASE_KEY: "black-forest-labs/FLUX.1-Krea"}, "names a repo, not a file"),
        ("flux-dev", {"ae": "./models/ae.safetensors"}, "no such file"),
        ("flux-dev", {"ae": "models/ae.safetensors"}, "no such file"),
        ("flux-dev", {"ae": "ae.safetensors"}, "no such file"),
        ("flux-dev", {"ae": "org/repo/../../etc/passwd"}, "not a file, a URL or"),
        ("flux-dev", {"ae": "not a repo/x/y"}, "not a file, a URL or"),
        ("sd35-large", {"t5xxl": "C:\\models\\t5.safetensors"}, "no such file"),
    ],
)
def test_what_cannot_work_is_refused_before_renting(model, choices, message):
    with pytest.raises(UsageError, match=message):
        fetch_plan(CATALOG.model(model), choices, MODELS)


def test_on_this_machine_local_files_are_used_in_place(tmp_path):
    local = tmp_path / "ae 模型.safetensors"
    local.write_bytes(b"x")
    files = by_key(fetch_plan(CATALOG.model("chroma"), {"ae": str(local)}, MODELS, in_place=True))
    assert files["ae"].in_place and files["ae"].remote_path == str(local)
    assert files["ae"].kind == "upload" and files["ae"].local_sha256 == ""
    assert not files["t5xxl"].in_place and files["t5xxl"].remote_path.startswith(MODELS)


def test_an_sd_base_model_may_still_be_a_whole_diffusers_repo():
    files = plan("sdxl", pretrained_model_name_or_path="someone/my-sdxl-finetune")
    assert (files[0].kind, files[0].filename) == ("hf", "")
    named = plan("sdxl", pretrained_model_name_or_path="stabilityai/stable-diffusion-xl-base-1.0")
    assert named[0].filename == "sd_xl_base_1.0.safetensors" and named[0].size_gb == 6.94


def test_expected_size_counts_unknown_files_as_the_presets_own():
    flux = CATALOG.model("flux-dev")
    mine = plan("flux-dev", pretrained_model_name_or_path="acme/flux-fp8/f.safetensors")
    assert mine[0].size_gb is None
    # The unknown base counts as the preset's 23.8 GB; the default companions as themselves.
    assert expected_gb(mine, flux) == pytest.approx(23.8 + 0.246 + 9.79 + 0.335)
    assert expected_gb(mine[1:2], flux) == pytest.approx(0.246)
    assert expected_gb((), flux) == 0


def test_render_paths_default_to_a_models_folder_next_to_launch_sh():
    base, companions = render_paths(CATALOG.model("flux-dev"), {"t5xxl": "/data/t5_fp8.sft"})
    assert base == "models/flux1-dev.safetensors"
    assert companions == (
        ("clip_l", "models/clip_l.safetensors"),
        ("t5xxl", "/data/t5_fp8.sft"),
        ("ae", "models/ae.safetensors"),
    )
    downloads = {d["option"]: d for d in render_downloads(CATALOG.model("flux-dev"), {})}
    assert downloads["ae"]["url"] == (
        "https://huggingface.co/black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors"
    )
    assert downloads[BASE_KEY]["gated"] == "yes"
    assert render_paths(CATALOG.model("sd15"), {}) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        (),
    )
    with pytest.raises(UsageError, match="loads no --clip-l"):
        render_paths(CATALOG.model("chroma"), {"clip_l": "x"})


# ---------------------------------------------------------------------------------------------
# The host script, for real: LocalHost, bash, huggingface_hub against the fake hub

TOKEN = "hf_" + "S3cr3tT0k3n" * 3
AE = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ae"
CLIP = b"\x08\x00\x00\x00\x00\x00\x00\x00{}    clip"
T5 = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      t5"
BASE = b"\x08\x00\x00\x00\x00\x00\x00\x00{}    base"


@pytest.fixture
def hub(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake_hub.files.update(
        {
            "acme/flux-dev/flux1-dev.safetensors": BASE,
            "acme/flux-dev/text_encoders/clip_l.safetensors": CLIP,
            "acme/shared/ae.safetensors": AE,
            "acme/te/t5xxl_fp16.safetensors": T5,
        }
    )
    fake_hub.gated.add("acme/flux-dev")
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return fake_hub


def _script(files: tuple[FetchFile, ...], models: Path) -> str:
    return render_script(
        "files", **script_values(files, python=sys.executable, hf_home=str(models / "hf"))
    )


def test_files_script_fetches_every_file_once_with_the_token_on_stdin(tmp_path, hub):
    models = tmp_path / "models $(touch pwned) 模型"
    t5_url = f"{hub.url}/acme/te/resolve/main/t5xxl_fp16.safetensors"
    files = fetch_plan(
        CATALOG.model("flux-dev"),
        {
            BASE_KEY: "acme/flux-dev/flux1-dev.safetensors",
            "clip_l": "acme/flux-dev/text_encoders/clip_l.safetensors",
            "t5xxl": t5_url,
            "ae": "acme/shared/ae.safetensors",
        },
        str(models),
    )
    script = _script(files, models)
    assert TOKEN not in script
    host = LocalHost()
    result = host.run(script, stdin=TOKEN.encode() + b"\n", check=True)
    found = parse_kv(result.stdout)
    assert {k: v for k, v in found.items() if k.startswith("file.")} == {
        f"file.{key}": "downloaded" for key in (BASE_KEY, "clip_l", "t5xxl", "ae")
    }
    wanted = {BASE_KEY: BASE, "clip_l": CLIP, "t5xxl": T5, "ae": AE}
    for f in files:
        assert Path(found[f"path.{f.key}"]) == Path(f.remote_path)
        assert Path(f.remote_path).read_bytes() == wanted[f.key], f.key
    assert f"Bearer {TOKEN}" in hub.auth_seen
    assert TOKEN not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):  # nothing on the "host" holds the token
        if path.is_file() and not path.is_symlink():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert not (tmp_path / "pwned").exists()

    # Another family's run on the same host: the shared ae (and everything else) is cached.
    chroma = fetch_plan(
        CATALOG.model("chroma"),
        {
            BASE_KEY: "acme/flux-dev/flux1-dev.safetensors",
            "t5xxl": t5_url,
            "ae": "acme/shared/ae.safetensors",
        },
        str(models),
    )
    again = parse_kv(host.run(_script(chroma, models), check=True).stdout)
    assert again["file.ae"] == again["file.t5xxl"] == again[f"file.{BASE_KEY}"] == "cached"


def test_files_script_stops_clearly_on_a_gated_repo_without_a_token(tmp_path, hub):
    models = tmp_path / "models"
    files = fetch_plan(
        CATALOG.model("flux-dev"),
        {
            BASE_KEY: "acme/flux-dev/flux1-dev.safetensors",
            "clip_l": "acme/shared/ae.safetensors",
            "t5xxl": "acme/te/t5xxl_fp16.safetensors",
            "ae": "acme/shared/ae.safetensors",
        },
        str(models),
    )
    with pytest.raises(RemoteCommandError) as err:
        LocalHost().run(_script(files, models), check=True)
    assert err.value.returncode == 4
    assert "gated repos need a token" in err.value.output
    assert not Path(files[0].remote_path).exists()


def test_files_script_checks_that_uploads_arrived(tmp_path, hub):
    local = tmp_path / "clip_l.safetensors"
    local.write_bytes(CLIP)
    models = tmp_path / "models"
    files = fetch_plan(
        CATALOG.model("chroma"),
        {
            BASE_KEY: "acme/te/t5xxl_fp16.safetensors",
            "t5xxl": str(local),
            "ae": "acme/shared/ae.safetensors",
        },
        str(models),
    )
    with pytest.raises(RemoteCommandError) as err:
        LocalHost().run(_script(files, models), check=True)
    assert err.value.returncode == 3 and "missing on the host" in err.value.output
    upload = next(f for f in files if f.kind == "upload")
    Path(upload.remote_path).parent.mkdir(parents=True, exist_ok=True)
    Path(upload.remote_path).write_bytes(local.read_bytes())  # what the launcher's upload does
    found = parse_kv(LocalHost().run(_script(files, models), check=True).stdout)
    assert found["file.t5xxl"] == "cached" and found["file.ae"] == "downloaded"
