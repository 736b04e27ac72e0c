"""The example model bundled with fusekit (package data)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["example_model_path"]


def example_model_path() -> Path:
    """Path of the bundled example model: PaddleOCR's mobile v2.0 text-direction classifier.

    A real, trained MobileNetV3-small (566 ONNX nodes, 0.6 MB, Apache-2.0; the license notice is
    ``LICENSE-ppocr.txt`` next to it): BatchNorm, HardSwish written as Add/Clip/Div/Mul, SE blocks
    and Reshape, which exercises every fusion rule on a model small enough for a demo.
    """
    return Path(str(resources.files("fusekit") / "data" / "ppocr_mobile_v2_cls.onnx"))
