from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may touch the network
sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {fam: tiny.build(fam, root / fam) for fam in tiny.FAMILIES}


@pytest.fixture(scope="session")
def default_model():
    """The real default model (smollm2-135m-instruct), loaded once per session."""
    from s2e_lens import load_model

    return load_model(progress=False)
