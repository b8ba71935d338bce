"""`bnncube zoo build`: write one of the paper's networks to a model file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.errors import BnnError
from bnncube.fsutil import atomic_output_file, stderr_fd_silenced

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

NETWORKS = ("mnv2_fp", "mnv2_i8", "hybrid")
SUFFIXES = {"mnv2_fp": (".h5", ".keras"), "hybrid": (".h5", ".keras"), "mnv2_i8": (".tflite",)}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm")
ZOO_METADATA_KEY = "bnncube_zoo"
BN_IMAGES = 16  # generated images that set the BatchNormalization statistics of a built network


def generated_images(count: int, seed: int, size: int = 96) -> np.ndarray:
    """Smooth random colour images in [-1, 1] (NHWC): a stand-in for face crops.

    Each image is a sum of a few random low-frequency cosine patterns per channel plus a little
    noise, so that convolutions see spatial structure rather than white noise.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.zeros((count, size, size, 3), np.float32)
    for n in range(count):
        for c in range(3):
            img = np.zeros((size, size), np.float32)
            for _ in range(4):
                fy, fx = rng.uniform(0.5, 4.0, 2)
                phase = rng.uniform(0, 2 * np.pi)
                img += rng.uniform(0.2, 1.0) * np.cos(2 * np.pi * (fy * yy + fx * xx) + phase)
            images[n, :, :, c] = img
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    peak = np.max(np.abs(images), axis=(1, 2, 3), keepdims=True)
    return (images / np.maximum(peak, 1e-6)).clip(-1, 1)


def load_calibration_images(folder: str | Path, limit: int, size: int = 96) -> np.ndarray:
    """Images under ``folder`` (recursively), resized to size x size, scaled to [-1, 1]."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise BnnError(f"option --calib: {folder} is not a directory")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BnnError(f"option --calib: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    images = []
    for path in files[:limit]:
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB").resize((size, size), Image.BILINEAR)
        except Exception as exc:
            raise BnnError(f"{path}: cannot read image ({exc})") from None
        images.append(np.asarray(rgb, np.float32) / 127.5 - 1.0)
    return np.stack(images)


def quantize_mnv2(model: Any, images: np.ndarray) -> bytes:
    """Full-integer post-training quantization by the TFLite converter (int8 in, float32 out)."""
    import tensorflow as tf

    def representative() -> Iterator[list[np.ndarray]]:
        for image in images:
            yield [image[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.float32  # the paper's output is 32-bit
    with stderr_fd_silenced():  # the converter prints its settings from C++
        return bytes(converter.convert())


def build(
    network: str,
    output: str | Path,
    seed: int = 0,
    calib: str | Path | None = None,
    calib_count: int = 32,
    log: Callable[[str], None] = print,
) -> Path:
    """Build ``network`` and write it to ``output``; return the path written."""
    from bnncube.zoo import networks

    output = Path(output)
    if network not in NETWORKS:
        raise BnnError(f"network {network!r} is not one of {', '.join(NETWORKS)}")
    if output.suffix.lower() not in SUFFIXES[network]:
        raise BnnError(
            f"option -o: {output} must end in {' or '.join(SUFFIXES[network])} for {network}"
        )
    if seed < 0:
        raise BnnError(f"option --seed: {seed} must be >= 0")
    if calib is not None and network != "mnv2_i8":
        raise BnnError("option --calib: only mnv2_i8 is calibrated (post-training quantization)")
    if not output.parent.is_dir():
        raise BnnError(f"option -o: folder {output.parent} does not exist or is not a folder")
    if calib is not None:  # read the images before the long build, so a bad folder fails fast
        images = load_calibration_images(calib, calib_count)
    if network == "hybrid":
        model = networks.build_hybrid(seed)
    else:
        model = networks.build_mnv2_fp(seed)
    # untrained: give BatchNormalization the statistics of real activations (zoo/calibrate.py)
    from bnncube.zoo.calibrate import set_bn_statistics

    set_bn_statistics(model, generated_images(BN_IMAGES, seed + 1000))
    if network == "mnv2_i8":
        if calib is not None:
            log(f"calibration: {len(images)} images from {calib}")
        else:
            images = generated_images(calib_count, seed)
            log(
                f"calibration: {len(images)} generated images (smooth random patterns, not faces;"
                " pass --calib DIR for real face crops)"
            )
        from bnncube.converters.tflite_frontend import add_tflite_metadata

        buf = add_tflite_metadata(quantize_mnv2(model, images), ZOO_METADATA_KEY, b"mnv2_i8")
        with atomic_output_file(output) as tmp:
            tmp.write_bytes(buf)
    else:
        with atomic_output_file(output) as tmp:
            model.save(tmp)
    log(f"wrote {output} ({network}, seed {seed})")
    return output
