"""Shared fixtures. Each area keeps its fixtures in its own module under tests/fixtures/."""

import pytest

pytest_plugins = [
    "tests.fixtures.images",
    "tests.fixtures.sshd",
    "tests.fixtures.fakesds",
    "tests.fixtures.hub",
    "tests.fixtures.runs",
    "tests.fixtures.gpu",
    "tests.fixtures.reaper",
]


@pytest.fixture(autouse=True)
def _no_user_presets(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The developer's own presets (user config dir) must not change what any test sees, and
    the tests' hash cache is their own."""
    monkeypatch.setenv("KOHYAWRAP_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
    monkeypatch.setenv("KOHYAWRAP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
