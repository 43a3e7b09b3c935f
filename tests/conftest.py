"""Shared fixtures. Each area keeps its fixtures in its own module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.images",
    "tests.fixtures.sshd",
    "tests.fixtures.fakesds",
    "tests.fixtures.hub",
]
