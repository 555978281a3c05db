from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """A model cache for the whole run (NIGHTINGALE_CACHE of CLI subprocesses)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tts(cache):
    """The synthetic model, built once per test run (the end-to-end tests share it, read-only)."""
    import nightingale_mlx as ng
    from nightingale_mlx.synthetic import synthetic_model

    return ng.TTS(synthetic_model(cache / "synthetic"))
