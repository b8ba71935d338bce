"""C99 runtime sources, shipped as package data (kernels arrive with the runtime issue)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
INCLUDE_DIR = ROOT / "include"
SRC_DIR = ROOT / "src"
