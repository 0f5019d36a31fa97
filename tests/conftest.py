"""Real models and real image sets, built once per machine into the qdq cache (see tools/datasets.py)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import datasets  # noqa: E402


@pytest.fixture(scope="session")
def effnet():
    return datasets.prepared("effnet")


@pytest.fixture(scope="session")
def ppocr_det():
    return datasets.prepared("ppocr_det")


@pytest.fixture(scope="session")
def prepared():
    return datasets.prepared
