"""Method families. ``method.module`` in conf/method/*.yaml names the LightningModule class."""

from __future__ import annotations

from hydra.utils import get_class


def method_class(path: str):
    return get_class(path)
