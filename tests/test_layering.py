"""Dependencies point down: adapters and billing never import Flask or the HTTP layer, and
services never read the Flask request."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", ["providers", "billing"])
def test_adapters_and_billing_never_import_flask_or_the_broker_web_layer(package: str) -> None:
    assert (ROOT / package / "__init__.py").exists()
    forbidden = ("flask", "flask_smorest", "werkzeug", "broker.api", "broker.auth")
    assert _violations(package, forbidden) == []


def test_providers_never_touch_the_database() -> None:
    assert _violations("providers", ("sqlalchemy", "broker.models", "broker.db")) == []


def test_services_and_models_never_import_flask() -> None:
    for package in ("broker/services", "broker/models", "broker/jobs"):
        assert _violations(package, ("flask", "flask_smorest", "werkzeug", "broker.api")) == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from flask import request\nimport werkzeug.exceptions\n")
    assert _imports(sample) == {"flask", "werkzeug.exceptions"}
