"""Adapters are found through the `cloud_broker.providers` entry points.

A package (ours or a third party's) declares

    [project.entry-points."cloud_broker.providers"]
    mycloud = "mycloud_broker:MyCloudAdapter"

and, once installed, `mycloud` can be named as a provider's adapter: nothing in the broker
changes. Entry points are listed on demand and loaded on first use (a broken plugin only
breaks the providers that use it), checked against the contract, then cached.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from providers.base import CONTRACT_VERSION, AdapterContext, ProviderAdapter

GROUP = "cloud_broker.providers"


class AdapterUnavailable(LookupError):
    """No adapter of that name is installed, or it fails the contract check."""


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    target: str  # "module:attribute"
    distribution: str | None


_lock = threading.Lock()
_loaded: dict[str, type[ProviderAdapter]] = {}


def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=GROUP):
        # The first distribution on sys.path wins, as for any import.
        found.setdefault(entry_point.name, entry_point)
    return found


def available() -> list[AdapterInfo]:
    """Every installed adapter, by name (without importing any)."""
    return [
        AdapterInfo(name, ep.value, ep.dist.name if ep.dist else None)
        for name, ep in sorted(_entry_points().items())
    ]


def names() -> list[str]:
    return [info.name for info in available()]


def load(name: str) -> type[ProviderAdapter]:
    """The adapter class registered as `name`, imported and checked once."""
    with _lock:
        cls = _loaded.get(name)
        if cls is not None:
            return cls
        entry_point = _entry_points().get(name)
        if entry_point is None:
            raise AdapterUnavailable(f"No provider adapter named {name!r} is installed.")
        try:
            cls = entry_point.load()
        except Exception as error:  # a broken plugin must not take the broker down
            raise AdapterUnavailable(
                f"Provider adapter {name!r} failed to load: {type(error).__name__}."
            ) from error
        if not (isinstance(cls, type) and issubclass(cls, ProviderAdapter)):
            raise AdapterUnavailable(f"{entry_point.value} is not a ProviderAdapter.")
        if getattr(cls, "contract_version", None) != CONTRACT_VERSION:
            raise AdapterUnavailable(
                f"Provider adapter {name!r} implements contract version "
                f"{getattr(cls, 'contract_version', None)}, the broker needs {CONTRACT_VERSION}."
            )
        if getattr(cls, "__abstractmethods__", None):
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise AdapterUnavailable(f"Provider adapter {name!r} does not implement {missing}.")
        _loaded[name] = cls
        return cls


def build(
    name: str,
    settings: Mapping[str, Any],
    credentials: Mapping[str, str],
    context: AdapterContext,
) -> ProviderAdapter:
    return load(name)(settings, credentials, context)


def forget() -> None:
    """Drop the cache (tests that install a plugin at run time)."""
    with _lock:
        _loaded.clear()
