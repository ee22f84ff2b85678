"""Parsing ``--app`` values."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from retract.cli._app import parse_app


def test_module_form() -> None:
    """``package.module:attr`` names a module and a (dotted) attribute."""
    spec = parse_app("myapp.undo:handlers.registry")
    assert (spec.module, spec.path, spec.attribute) == ("myapp.undo", None, "handlers.registry")


@pytest.mark.parametrize("text", ["handlers.py:registry", "app/handlers:registry"])
def test_file_form(text: str) -> None:
    """A ``.py`` suffix or a slash means a file path."""
    spec = parse_app(text)
    assert spec.module is None
    assert spec.path == Path(text.rpartition(":")[0])
    assert spec.attribute == "registry"


@pytest.mark.parametrize("text", ["registry", ":registry", "module:", ""])
def test_malformed(text: str) -> None:
    """Without both parts the value is rejected (argparse turns this into exit 2)."""
    with pytest.raises(argparse.ArgumentTypeError, match="module:attribute"):
        parse_app(text)
