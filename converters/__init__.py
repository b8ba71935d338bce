"""Front ends (Keras/QKeras, TFLite) to bnncube's IR, lowering passes, and (later) exporters."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
