"""The README's promises that code can check: every environment variable the code reads is documented."""

from __future__ import annotations

import importlib
import re

import pytest

from services.common.files import REPO_ROOT

SETTINGS_MODULES = (
    "services.tiler.app",
    "services.preprocess.app",
    "services.detector.app",
    "services.aggregator.app",
    "services.gateway.settings",
)


def settings_variables() -> dict[str, str]:
    """Every `<PREFIX>_<FIELD>` a service's Settings reads, with its default as text."""
    found = {}
    for module in SETTINGS_MODULES:
        settings = importlib.import_module(module).Settings
        prefix = settings.model_config.get("env_prefix", "")
        for name, field in settings.model_fields.items():
            found[f"{prefix}{name}".upper()] = str(field.default)
    return found


def code_variables() -> set[str]:
    """The `MITOSCOPE_*` variables read anywhere in the package code."""
    names: set[str] = set()
    for folder in ("mitoscope", "services", "training"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"\"(MITOSCOPE_[A-Z0-9_]+)\"", path.read_text()))
    return names


@pytest.mark.parametrize("variable", sorted(settings_variables()) + sorted(code_variables()))
def test_every_environment_variable_is_in_the_readme(variable: str) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"`{variable}`" in readme, f"README's environment table lacks {variable}"
