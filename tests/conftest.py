"""Shared test set-up: offline, quiet, Prefect state in a per-session temporary home.

Session fixtures that are expensive (tiny model, engines, packaged model conversion) live in
`tests/fixtures/*.py` and are loaded here as plugins so every test module shares them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="prefpipe-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME / "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", str(_SESSION_HOME / "vllm"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (REPO / "tests" / "fixtures").glob("*.py") if p.stem != "__init__"
)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real third-party data (../shared/data/real); see its README for licences."""
    assert REAL.is_dir(), f"real data not found at {REAL}"
    return REAL


@pytest.fixture
def data_root(tmp_path) -> Path:
    return tmp_path / "data"
