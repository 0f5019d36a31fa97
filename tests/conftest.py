"""Real models and real image sets, built once per machine into the qdq cache (see tools/datasets.py).

Two tiers: a test that uses a real model (the fixtures below) is marked ``slow`` automatically;
``pytest -m "not slow"`` runs the fast tier, synthetic graphs with known answers only."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import datasets  # noqa: E402

REAL = {"effnet", "ppocr_det", "prepared"}


def pytest_collection_modifyitems(items):
    for item in items:
        if REAL & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def effnet():
    return datasets.prepared("effnet")


@pytest.fixture(scope="session")
def ppocr_det():
    return datasets.prepared("ppocr_det")


@pytest.fixture(scope="session")
def prepared():
    return datasets.prepared
