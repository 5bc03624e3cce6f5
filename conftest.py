"""Test configuration shared by all tests. Fixture modules live in tests/fixtures/ (one per area)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Qt runs offscreen in tests; set before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("LANG", "C.UTF-8")
os.environ.setdefault("MPLBACKEND", "Agg")
# keep QSettings of tests away from the user's real settings
os.environ.setdefault("METASCOPE_TEST", "1")

pytest_plugins = [
    "tests.fixtures.slides",
    "tests.fixtures.models",
    "tests.fixtures.datasets",
    "tests.fixtures.cohort",
]

SHARED_DATA = Path(__file__).resolve().parent.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own MetaScope home (model library, cache, demo assets)."""
    home = tmp_path_factory.mktemp("metascope-home")
    monkeypatch.setenv("METASCOPE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real public data); tests using it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (real data is optional)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Folder for screenshots and other artefacts a person should look at."""
    d = Path(__file__).resolve().parent / "test-artifacts"
    d.mkdir(exist_ok=True)
    return d
