"""Locate files shipped inside installed packages without importing those packages."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from tunesmith.errors import TunesmithError


def packaged_path(distribution: str, relative: str, install_hint: str) -> Path:
    """Path of `relative` inside the installed `distribution`; a clear error says how to install it."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise TunesmithError(f"package {distribution!r} is not installed; install it with: {install_hint}") from None
    path = Path(str(dist.locate_file(relative)))
    if not path.exists():
        raise TunesmithError(f"{path} is missing from package {distribution!r}; reinstall it with: {install_hint}")
    return path
