"""Markers for the engine tests."""

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: compiles with torch.compile (~90 s on 2 loaded CPU "
                            "cores); runs only with GRADLEAK_RUN_SLOW=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("GRADLEAK_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow (torch.compile): set GRADLEAK_RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
