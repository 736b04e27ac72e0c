"""Shared fixtures: paths to the read-only data beside the checkout (../shared)."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _find_shared() -> Path:
    """The read-only data: ``FUSEKIT_SHARED`` if set, else ``../shared`` beside the checkout
    (CI's layout), else ``shared`` beside the local repository this one was cloned from (a
    scratch clone, ``git clone . "$(mktemp -d)"``, has no ``../shared`` of its own)."""
    env = os.environ.get("FUSEKIT_SHARED")
    if env:
        return Path(env)
    beside = ROOT.parent / "shared"
    if beside.is_dir():
        return beside
    try:
        url = subprocess.run(
            ["git", "-C", str(ROOT), "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        url = ""
    if url and "://" not in url and ":" not in url.split("/")[0]:  # a local path, not a URL
        origin = Path(url).expanduser()
        candidate = (origin if origin.is_absolute() else ROOT / origin).resolve().parent
        if (candidate / "shared").is_dir():
            return candidate / "shared"
    return beside


SHARED = _find_shared()
CORPUS = SHARED / "corpus"


def corpus_models() -> list[str]:
    """Names of the corpus models (empty if ../shared is missing)."""
    return sorted(p.name[: -len(".onnx.gz")] for p in (CORPUS / "models").glob("*.onnx.gz"))


def corpus_bytes(name: str) -> bytes:
    """The uncompressed bytes of corpus model ``name``."""
    return gzip.open(CORPUS / "models" / f"{name}.onnx.gz").read()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(
            f"{SHARED} is missing: the tests need ../shared beside the checkout (or FUSEKIT_SHARED)"
        )
    return SHARED
