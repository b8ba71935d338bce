"""bnncube: an open toolchain for binary and hybrid (1-bit + 8-bit) networks on STM32 MCUs."""

import os

# QKeras and larq need the legacy Keras 2 API (tf-keras); this must happen before TensorFlow is
# imported anywhere (DESIGN.md section 2).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
