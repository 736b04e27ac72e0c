"""Shared fixtures: paths to the read-only data beside the checkout (../shared)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
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
        pytest.fail(f"{SHARED} is missing: the tests need ../shared beside the checkout")
    return SHARED
