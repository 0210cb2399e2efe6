"""Files the toolkit ships as package data (``ttfs.fixtures``): bundles and the embedded sample.

In a checkout they are the repository's ``fixtures/`` folder; in an installed
wheel, the same files inside the package.  Either way they are found through
``importlib.resources``, so every default works from any directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PACKAGE = "ttfs.fixtures"
DEFAULT_BUNDLE = "mnist-fc2"


def packaged(*parts: str) -> Path:
    """Path of a packaged file or folder, e.g. ``packaged("data", "mnist-sample.npz")``."""
    return Path(str(files(PACKAGE).joinpath(*parts)))


def packaged_bundle(name: str) -> Path:
    """The folder of the packaged bundle ``name`` (e.g. "mnist-fc2"); it may not exist."""
    return packaged("bundles", name)


def packaged_bundle_names() -> list[str]:
    """Names of the bundles shipped with the toolkit."""
    root = packaged("bundles")
    return sorted(p.name for p in root.iterdir() if (p / "network.json").is_file())


def bundle_location(argument: str) -> Path:
    """A ``--bundle`` argument as a path: an existing path as given, else a packaged bundle's name."""
    path = Path(argument)
    if path.exists() or "/" in argument or argument in (".", ".."):
        return path
    candidate = packaged_bundle(argument)
    return candidate if candidate.is_dir() else path
