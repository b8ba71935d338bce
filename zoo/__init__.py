"""The paper's three networks: float MobileNetV2, its int8 TFLite version, and the hybrid net."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
