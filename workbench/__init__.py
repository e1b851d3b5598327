"""workbench: controlled experiments for reinforcement learning on language models."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

__version__ = "0.1.0"
