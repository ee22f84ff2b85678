"""Fixtures for the tests of ``retract.fs``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from retract.fs import _rename


@pytest.fixture(params=["native", "fallback"])
def renames(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each rename backend: the kernel's renameat2 flags, and the portable fallback."""
    if request.param == "native":
        if not _rename.has_native_flags():
            pytest.skip("the kernel or C library has no atomic no-replace/exchange rename")
    else:
        monkeypatch.setattr(_rename, "_use_native", False)
    return str(request.param)


@pytest.fixture
def set_umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test; the old one is restored afterwards."""
    original = os.umask(0o022)
    os.umask(original)

    def apply(mask: int) -> None:
        os.umask(mask)

    try:
        yield apply
    finally:
        os.umask(original)
