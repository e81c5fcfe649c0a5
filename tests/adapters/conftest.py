"""What the adapter contract suites share: each registered adapter's harness.

`test_contract.py` (machines) and `test_storage_contract.py` (volumes and buckets) are
parametrized over the adapters installed through the `cloud_broker.providers` entry points
(`adapter_name`); the `cloud` fixture gives each test that adapter's harness, pointed at a fresh
cloud of its own. An adapter added to the broker without a harness listed here fails the suites
rather than going untested.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from providers import registry
from tests.adapters.harness import Harness

# Adapter name → module providing `harness(tmp_path)`.
HARNESSES = {
    "simulated": "tests.adapters.simulated_harness",
    "openstack": "tests.adapters.fake_openstack",
    "outscale": "tests.adapters.fake_outscale",
}


@pytest.fixture
def cloud(adapter_name: str, tmp_path: Path) -> Iterator[Harness]:
    if adapter_name not in HARNESSES:
        pytest.fail(f"Adapter {adapter_name!r} is registered but has no contract harness.")
    module = importlib.import_module(HARNESSES[adapter_name])
    manager: AbstractContextManager[Harness] = module.harness(tmp_path)
    with manager as harness:
        assert type(harness.build()) is registry.load(adapter_name)
        yield harness
