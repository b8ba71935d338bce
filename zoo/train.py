"""`bnncube train`: ArcFace training of the zoo's embedding networks. See docs/train.md.

- ``mnv2_fp`` is trained in float; afterwards ``mnv2_i8.tflite`` is made from it by TFLite
  full-integer post-training quantization, calibrated on images of the training split.
- ``hybrid`` is trained as the QKeras model itself (quantization-aware training: the forward pass
  uses the binary and 8-bit quantizers, gradients pass through them as straight-through
  estimators), so the saved ``hybrid.h5`` is the deployable network.

The data is split by identity: the people of the validation part are never seen in training, and
the validation metric is pair-verification accuracy among them, as LFW tests people unseen in
training (a closed-set classification accuracy would say little about verification).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnncube.errors import BnnError
from bnncube.fsutil import atomic_output_file, write_text_files

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

MODELS = ("mnv2_fp", "hybrid")
STRATEGIES = ("default", "mirrored", "multiworker")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_SIZE = 96
MAX_VAL_PAIRS = 1000  # matched pairs (and as many mismatched) drawn among held-out people
CHECKPOINTS_KEPT = 2
STATE_FILE = "train_state.json"
EMBED_BATCH = 64

# Settings for `bnncube demo`: synthetic identities, two short CPU trainings (see docs/train.md
# for the measured times and held-out accuracies). The ArcFace margin is warmed up from 0 and
# s/m are smaller than the CLI defaults (s=64, m=0.5), which do not converge in a few hundred
# steps on a few dozen classes.
DEMO_SETTINGS: dict[str, Any] = {
    "identities": 100,
    "images_per_identity": 10,
    "data_seed": 0,  # training people
    "test_seed": 1,  # other people, for the held-out evaluation
    "mnv2_fp": {
        "epochs": 17,
        "batch": 16,
        "lr": 5e-3,
        "arcface_s": 16.0,
        "arcface_m": 0.2,
        "margin_warmup": 2,
        "val_split": 0.2,
    },
    "hybrid": {
        "epochs": 14,
        "batch": 16,
        "lr": 2e-3,
        "arcface_s": 16.0,
        "arcface_m": 0.2,
        "margin_warmup": 2,
        "val_split": 0.2,
    },
}


@dataclass
class TrainResult:
    """What :func:`train` wrote and measured."""

    model_path: Path
    int8_path: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    val_accuracy: float = float("nan")


# --------------------------------------------------------------------------------------------
# Data: scan, split by identity, validation pairs


def scan_people(data: Path) -> dict[str, list[Path]]:
    """Person name -> sorted image files, for an LFW-layout folder (``DATA/Name/*.jpg``)."""
    if not data.is_dir():
        raise BnnError(f"option --data: {data} is not a directory (expected LFW layout DIR/Name/)")
    people: dict[str, list[Path]] = {}
    for person in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f
            for f in person.iterdir()
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
        )
        if files:
            people[person.name] = files
    if not people:
        raise BnnError(
            f"option --data: no images ({', '.join(IMAGE_SUFFIXES)}) in person folders under "
            f"{data} (expected LFW layout DIR/Name/Name_0001.jpg)"
        )
    return people


def split_identities(
    people: dict[str, list[Path]], val_split: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split people (not images) into training and held-out validation identities.

    Held-out people are drawn (seeded) among those with at least two images, since a person with
    one image gives no matched pair; people with a single image always train. Raises BnnError when
    either part would have fewer than two people.
    """
    names = sorted(people)
    multi = [n for n in names if len(people[n]) >= 2]
    n_val = min(int(round(val_split * len(names))), len(multi))
    n_train = len(names) - n_val
    if n_val < 2 or n_train < 2:
        raise BnnError(
            f"option --data/--val-split: {len(names)} identities ({len(multi)} with 2+ images) "
            f"split into {n_train} training and {n_val} held-out identities at --val-split "
            f"{val_split:g}; each part needs at least 2 (held-out people need 2+ images): "
            "add people or change --val-split"
        )
    rng = np.random.default_rng([seed, 0x5A11])
    val = sorted(str(n) for n in rng.choice(multi, size=n_val, replace=False))
    held = set(val)
    return [n for n in names if n not in held], val


def validation_pairs(
    counts: list[int], seed: int, max_pairs: int = MAX_VAL_PAIRS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Balanced matched/mismatched pairs among held-out people.

    ``counts[p]`` is person p's image count; images are numbered person after person. Returns
    (idx_a, idx_b, same, fold) with folds interleaved so that each fold has both kinds.
    """
    rng = np.random.default_rng([seed, 0x9A1E])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    matched = [
        (int(s + i), int(s + j))
        for s, c in zip(starts, counts, strict=True)
        for i in range(c)
        for j in range(i + 1, c)
    ]
    total = int(sum(counts))
    owner = np.repeat(np.arange(len(counts)), counts)
    n_mismatched = (total * total - int(np.sum(np.square(counts)))) // 2
    n = min(len(matched), n_mismatched, max_pairs)
    pick = rng.choice(len(matched), size=n, replace=False)
    same_pairs = [matched[int(k)] for k in pick]
    diff_pairs: set[tuple[int, int]] = set()
    if n_mismatched <= 4 * n:
        every = [(a, b) for a in range(total) for b in range(a + 1, total) if owner[a] != owner[b]]
        chosen = rng.choice(len(every), size=n, replace=False)
        diff_pairs = {every[int(k)] for k in chosen}
    while len(diff_pairs) < n:
        a, b = (int(v) for v in rng.integers(0, total, 2))
        if owner[a] != owner[b]:
            diff_pairs.add((min(a, b), max(a, b)))
    diff = sorted(diff_pairs)
    n_folds = min(10, n)
    idx_a = np.array([p[0] for p in same_pairs] + [p[0] for p in diff], np.int64)
    idx_b = np.array([p[1] for p in same_pairs] + [p[1] for p in diff], np.int64)
    same = np.array([True] * n + [False] * n)
    fold = np.concatenate([np.arange(n) % n_folds, np.arange(n) % n_folds]).astype(np.int64)
    return idx_a, idx_b, same, fold


def pair_accuracy(embeddings: np.ndarray, pairs: tuple[np.ndarray, ...]) -> float:
    """Pair-verification accuracy (cosine, threshold chosen on the other folds: LFW protocol)."""
    from bnncube.validation.lfw import Pairs, evaluate

    idx_a, idx_b, same, fold = pairs
    result = evaluate(embeddings, Pairs(idx_a=idx_a, idx_b=idx_b, same=same, fold=fold))
    return float(result["accuracy_mean"])


def no_autograph(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Trace ``fn`` as written (explicit tf.cond, no Python control flow on tensors)."""
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(fn)


def _decode(path: Any) -> Any:
    """File -> float32 image (96, 96, 3) in [-1, 1]."""
    import tensorflow as tf

    img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    img = tf.cast(img, tf.float32)
    shape = tf.shape(img)
    img = tf.cond(
        tf.logical_and(tf.equal(shape[0], IMAGE_SIZE), tf.equal(shape[1], IMAGE_SIZE)),
        lambda: img,
        lambda: tf.image.resize(img, (IMAGE_SIZE, IMAGE_SIZE), method="bilinear"),
    )
    img = tf.ensure_shape(img, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return img / 127.5 - 1.0


def _augment(img: Any, seed: Any) -> Any:
    """Training augmentation, stateless (seeded per image and epoch): flip, brightness,
    contrast, small crop-and-resize (scale 0.88-1, so translations up to ~6 px)."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 5)
    img = tf.image.stateless_random_flip_left_right(img, seeds[0])
    img = tf.image.stateless_random_brightness(img, 0.15, seeds[1])
    img = tf.image.stateless_random_contrast(img, 0.8, 1.2, seeds[2])
    scale = tf.random.stateless_uniform((), seeds[3], 0.88, 1.0)
    off = tf.random.stateless_uniform((2,), seeds[4], 0.0, 1.0) * (1.0 - scale)
    box = tf.stack([off[0], off[1], off[0] + scale, off[1] + scale])[None]
    img = tf.image.crop_and_resize(img[None], box, [0], (IMAGE_SIZE, IMAGE_SIZE))[0]
    return tf.clip_by_value(img, -1.0, 1.0)


def load_images(files: list[Path]) -> np.ndarray:
    """Decode files (no augmentation) to an (n, 96, 96, 3) float32 array in [-1, 1]."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices([str(f) for f in files])
    ds = ds.map(
        no_autograph(_decode), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).batch(256)
    try:
        return np.concatenate([b.numpy() for b in ds], axis=0)
    except tf.errors.OpError as exc:
        reason = exc.message.splitlines()[0].split(": ")[-1] if exc.message else ""
        raise BnnError(f"option --data: cannot decode an image ({reason})") from None


def training_dataset(
    files: list[str], labels: list[int], batch: int, seed: int, epoch: int, cache: Any = None
) -> Any:
    """Files -> decode -> resize -> [-1, 1] -> (cached) -> augment -> shuffle -> batch -> prefetch.

    ``cache`` is an already-decoded ``tf.data.Dataset`` of (image, label) to reuse across epochs.
    Augmentation and shuffle order depend on (seed, epoch) only.
    """
    import tensorflow as tf

    if cache is None:
        cache = decoded_dataset(files, labels)
    ds = cache.enumerate()
    epoch_seed = tf.constant([seed, epoch], tf.int64)

    def aug(i: Any, item: Any) -> Any:
        img, label = item
        s = tf.random.experimental.stateless_fold_in(epoch_seed, i)
        return _augment(img, s), label

    ds = ds.map(no_autograph(aug), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.shuffle(len(files), seed=seed * 1000003 + epoch, reshuffle_each_iteration=False)
    return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def decoded_dataset(files: list[str], labels: list[int]) -> Any:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int32)))
    ds = ds.map(
        no_autograph(lambda f, y: (_decode(f), y)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.cache()


# --------------------------------------------------------------------------------------------
# Training


def _strategy(name: str) -> Any:
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as exc:
            raise BnnError(f"option --strategy multiworker: {exc} (check TF_CONFIG)") from None
    return tf.distribute.get_strategy()


def _is_chief(strat: Any) -> bool:
    """True unless this is a non-chief worker of a multi-worker cluster (TF_CONFIG)."""
    resolver = getattr(strat, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if task_type == "chief":
        return True
    return not has_chief and task_type == "worker" and int(task_id or 0) == 0


def _check_options(
    model_name: str,
    epochs: int,
    batch: int,
    lr: float,
    arcface_s: float,
    arcface_m: float,
    val_split: float,
    strategy: str,
    seed: int,
    calib_count: int,
    margin_warmup: int,
) -> None:
    if model_name not in MODELS:
        raise BnnError(f"option --model: {model_name!r} is not one of {', '.join(MODELS)}")
    if strategy not in STRATEGIES:
        raise BnnError(f"option --strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    checks = [
        (epochs >= 1, f"option --epochs: {epochs} must be >= 1"),
        (batch >= 1, f"option --batch: {batch} must be >= 1"),
        (math.isfinite(lr) and lr > 0, f"option --lr: {lr} must be > 0"),
        (
            math.isfinite(arcface_s) and arcface_s > 0,
            f"option --arcface-s: {arcface_s} must be > 0",
        ),
        (
            math.isfinite(arcface_m) and 0 <= arcface_m < math.pi / 2,
            f"option --arcface-m: {arcface_m} must be in [0, pi/2) radians",
        ),
        (
            math.isfinite(val_split) and 0 < val_split < 1,
            f"option --val-split: {val_split} must be between 0 and 1 (exclusive)",
        ),
        (seed >= 0, f"option --seed: {seed} must be >= 0"),
        (calib_count >= 1, f"option --calib-count: {calib_count} must be >= 1"),
        (margin_warmup >= 0, f"option --margin-warmup: {margin_warmup} must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise BnnError(message)


def _bn_momentum(total_steps: int) -> float:
    """BN moving-average momentum: Keras' 0.99 for long runs; lower for short ones so that the
    inference statistics match the trained weights (0.99 needs ~500 steps to forget the init)."""
    return float(min(0.99, max(0.5, 1.0 - 5.0 / max(total_steps, 1))))


def _read_state(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / STATE_FILE
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        raise BnnError(
            f"option --resume: {path} is missing or unreadable (not a bnncube train output?)"
        ) from None


def train(
    model_name: str,
    data: str | Path,
    output: str | Path,
    *,
    epochs: int = 10,
    batch: int = 64,
    lr: float = 1e-3,
    arcface_s: float = 64.0,
    arcface_m: float = 0.5,
    val_split: float = 0.2,
    resume: bool = False,
    strategy: str = "default",
    seed: int = 0,
    int8: bool = True,
    calib_count: int = 100,
    progress: bool = True,
    log: Callable[[str], None] = print,
    margin_warmup: int = 0,
) -> TrainResult:
    """Train ``model_name`` (mnv2_fp or hybrid) with ArcFace on the LFW-layout folder ``data``.

    Writes ``output/MODEL.h5`` (the embedding network), for mnv2_fp ``mnv2_i8.tflite`` (unless
    ``int8`` is False), ``checkpoints/``, ``train_log.json`` and ``train_report.txt``.
    ``margin_warmup``: epochs over which the ArcFace margin rises linearly from 0 to
    ``arcface_m`` (0: full margin from the start).
    """
    _check_options(
        model_name,
        epochs,
        batch,
        lr,
        arcface_s,
        arcface_m,
        val_split,
        strategy,
        seed,
        calib_count,
        margin_warmup,
    )
    data, output = Path(data), Path(output)
    if output.exists() and not output.is_dir():
        raise BnnError(f"option -o: {output} exists and is not a folder")
    ckpt_dir = output / "checkpoints"
    people = scan_people(data)
    train_names, val_names = split_identities(people, val_split, seed)
    state: dict[str, Any] | None = None
    if resume:
        if not ckpt_dir.is_dir():
            raise BnnError(f"option --resume: no checkpoint in {ckpt_dir} (train without --resume)")
        state = _read_state(ckpt_dir)
        if state.get("model") != model_name:
            raise BnnError(
                f"option --resume: the checkpoint in {ckpt_dir} is of model "
                f"{state.get('model')!r}, not {model_name!r}"
            )
        if int(state.get("classes", -1)) != len(train_names):
            raise BnnError(
                f"option --resume: the checkpoint in {ckpt_dir} has {state.get('classes')} "
                f"classes, the data split gives {len(train_names)} (same --data, --val-split "
                "and --seed as the first run?)"
            )
        if state.get("train_identities") != train_names:
            raise BnnError(
                f"option --resume: the training identities differ from the checkpoint's in "
                f"{ckpt_dir} (same --data, --val-split and --seed as the first run?)"
            )
    elif ckpt_dir.exists():
        raise BnnError(
            f"option -o: {ckpt_dir} already exists; pass --resume to continue that training or "
            "choose another -o"
        )

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from bnncube.zoo import networks
    from bnncube.zoo.arcface import arcface_loss, make_head

    strat = _strategy(strategy)  # before other TF work (multi-worker needs that)
    tf.keras.utils.set_random_seed(seed)

    label_of = {name: k for k, name in enumerate(train_names)}
    train_files = [str(f) for n in train_names for f in people[n]]
    train_labels = [label_of[n] for n in train_names for f in people[n]]
    val_files = [f for n in val_names for f in people[n]]
    n_train = len(train_files)
    global_batch = min(batch, n_train)
    if global_batch < batch:
        log(f"note: only {n_train} training images: batch {batch} reduced to {global_batch}")
    steps_per_epoch = n_train // global_batch
    total_steps = steps_per_epoch * epochs

    val_images = load_images(val_files)
    val_pairs = validation_pairs([len(people[n]) for n in val_names], seed)
    created_output = not output.exists()
    output.mkdir(parents=True, exist_ok=True)

    with strat.scope():
        if model_name == "hybrid":
            model = networks.build_hybrid(seed)
        else:
            model = networks.build_mnv2_fp(seed)
        momentum = _bn_momentum(total_steps)
        for layer in model.layers:
            if isinstance(layer, tf.keras.layers.BatchNormalization):
                layer.momentum = momentum
        head = make_head(networks.EMBEDDING_SIZE, len(train_names), seed)
        # cosine decay to 1% of --lr over all --epochs (the step count survives --resume)
        schedule = tf.keras.optimizers.schedules.CosineDecay(lr, max(total_steps, 1), alpha=0.01)
        optimizer = tf.keras.optimizers.Adam(learning_rate=schedule)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    trainable = model.trainable_variables + [head.w]
    checkpoint = tf.train.Checkpoint(model=model, head=head, optimizer=optimizer, epoch=epoch_var)
    # multi-worker: every worker runs every save (reading synced variables needs all of them),
    # only the chief into OUTDIR; the others write into a temporary folder, removed at the end
    chief = _is_chief(strat)
    final_output = output
    if not chief:
        output = Path(tempfile.mkdtemp(prefix="bnncube_train_worker_"))
        if resume:
            shutil.copytree(ckpt_dir, output / "checkpoints")
        ckpt_dir = output / "checkpoints"
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=CHECKPOINTS_KEPT)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume:
        assert state is not None
        if manager.latest_checkpoint is None:
            raise BnnError(f"option --resume: no checkpoint in {ckpt_dir}")
        try:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BnnError(
                f"option --resume: checkpoint {manager.latest_checkpoint} does not fit "
                f"{model_name} with {len(train_names)} classes ({first})"
            ) from None
        start_epoch = int(epoch_var.numpy())
        history = [h for h in state.get("history", []) if int(h["epoch"]) <= start_epoch]
        log(f"resumed from {manager.latest_checkpoint} (epoch {start_epoch} done)")

    @tf.function(autograph=False)
    def train_step(dist_batch: Any, margin: Any) -> Any:
        def step(images: Any, labels: Any) -> Any:
            with tf.GradientTape() as tape:
                emb = model(images, training=True)
                per_example = arcface_loss(emb, head.w, labels, arcface_s, margin)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, trainable)
            optimizer.apply_gradients(zip(grads, trainable, strict=True))
            return loss

        per_replica = strat.run(step, args=dist_batch)
        return strat.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    @tf.function(autograph=False)
    def embed_batch(x: Any) -> Any:
        return model(x, training=False)

    def embed(images: np.ndarray) -> np.ndarray:
        out = [
            embed_batch(tf.constant(images[i : i + EMBED_BATCH])).numpy()
            for i in range(0, len(images), EMBED_BATCH)
        ]
        return np.concatenate(out, axis=0)

    cache = decoded_dataset(train_files, train_labels)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True

    settings = {
        "model": model_name,
        "data": str(data),
        "epochs": epochs,
        "batch": batch,
        "global_batch": global_batch,
        "lr": lr,
        "arcface_s": arcface_s,
        "arcface_m": arcface_m,
        "margin_warmup": margin_warmup,
        "val_split": val_split,
        "strategy": strategy,
        "replicas": int(strat.num_replicas_in_sync),
        "seed": seed,
        "int8": bool(int8 and model_name == "mnv2_fp"),
        "calib_count": calib_count,
        "bn_momentum": momentum,
    }
    split = {
        "identities": len(people),
        "train_identities": len(train_names),
        "val_identities": len(val_names),
        "train_images": n_train,
        "val_images": len(val_files),
        "val_pairs": int(val_pairs[2].size),
        "steps_per_epoch": steps_per_epoch,
    }
    log(
        f"train {model_name}: {len(train_names)} identities / {n_train} images for training, "
        f"{len(val_names)} held-out identities / {len(val_files)} images "
        f"({split['val_pairs']} validation pairs); {steps_per_epoch} steps of {global_batch} "
        f"per epoch; strategy {strategy} ({strat.num_replicas_in_sync} replica(s))"
    )

    for epoch in range(start_epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        ds = training_dataset(train_files, train_labels, global_batch, seed, epoch, cache)
        dist = strat.experimental_distribute_dataset(ds.with_options(options))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{epochs}",
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
                disable=None,  # no bar when stderr is not a terminal (logs, CI)
            )
        losses: list[float] = []
        try:
            for step_in_epoch, dist_batch in enumerate(dist):
                done = (epoch - 1) + step_in_epoch / max(steps_per_epoch, 1)
                ramp = 1.0 if margin_warmup == 0 else min(1.0, done / margin_warmup)
                loss = float(train_step(dist_batch, tf.constant(arcface_m * ramp, tf.float32)))
                if not math.isfinite(loss):
                    raise BnnError(
                        f"training diverged (loss {loss}) at epoch {epoch}: lower --lr or "
                        "--arcface-s"
                    )
                losses.append(loss)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        except tf.errors.InvalidArgumentError as exc:  # a file that is not a decodable image
            if created_output and epoch == 1:
                shutil.rmtree(output, ignore_errors=True)  # nothing useful written yet
            reason = exc.message.splitlines()[0].split(": ")[-1] if exc.message else ""
            raise BnnError(f"option --data: cannot decode a training image ({reason})") from None
        finally:
            if bar is not None:
                bar.close()
        mean_loss = float(np.mean(losses)) if losses else float("nan")
        val_acc = pair_accuracy(embed(val_images), val_pairs)
        seconds = time.perf_counter() - t0
        record = {
            "epoch": epoch,
            "loss": mean_loss,
            "val_accuracy": val_acc,
            "seconds": round(seconds, 3),
        }
        history.append(record)
        log(
            f"epoch {epoch}/{epochs}: loss {mean_loss:.4f}  val pair accuracy {val_acc:.4f}  "
            f"({seconds:.1f} s)"
        )
        epoch_var.assign(epoch)
        manager.save(checkpoint_number=epoch)
        state_out = {
            "model": model_name,
            "classes": len(train_names),
            "train_identities": train_names,
            "val_identities": val_names,
            "settings": settings,
            "history": history,
        }
        write_text_files({ckpt_dir / STATE_FILE: json.dumps(state_out, indent=1) + "\n"})

    model_path = output / f"{model_name}.h5"
    with atomic_output_file(model_path) as tmp:
        model.save(tmp)
    log(f"wrote {model_path}")
    int8_path: Path | None = None
    if settings["int8"]:
        from bnncube.converters.tflite_frontend import add_tflite_metadata
        from bnncube.zoo.build import ZOO_METADATA_KEY, quantize_mnv2

        rng = np.random.default_rng([seed, 0xCA11B])
        count = min(calib_count, n_train)
        pick = sorted(int(k) for k in rng.choice(n_train, size=count, replace=False))
        calib = load_images([Path(train_files[k]) for k in pick])
        buf = add_tflite_metadata(quantize_mnv2(model, calib), ZOO_METADATA_KEY, b"mnv2_i8")
        int8_path = output / "mnv2_i8.tflite"
        with atomic_output_file(int8_path) as tmp:
            tmp.write_bytes(buf)
        log(f"wrote {int8_path} (post-training quantization, {count} training images)")

    final_acc = float(history[-1]["val_accuracy"]) if history else float("nan")
    final = {
        "epochs_done": len(history),
        "loss": float(history[-1]["loss"]) if history else None,
        "val_accuracy": final_acc if history else None,
        "best_val_accuracy": max((h["val_accuracy"] for h in history), default=None),
        "train_seconds": round(sum(h["seconds"] for h in history), 3),
        "model_path": str(model_path),
        "int8_path": str(int8_path) if int8_path else None,
    }
    train_log = {
        "settings": settings,
        "split": split,
        "val_identity_names": val_names,
        "history": history,
        "final": final,
        "environment": {
            "tensorflow": tf.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    write_text_files(
        {
            output / "train_log.json": json.dumps(train_log, indent=1) + "\n",
            output / "train_report.txt": format_report(train_log),
        }
    )
    log(f"wrote {output / 'train_log.json'}, {output / 'train_report.txt'}")
    if not chief:
        shutil.rmtree(output, ignore_errors=True)
        log(f"worker done: the chief (worker 0) wrote the outputs in {final_output}")
        model_path = final_output / model_path.name
        int8_path = final_output / int8_path.name if int8_path else None
    return TrainResult(
        model_path=model_path, int8_path=int8_path, history=history, val_accuracy=final_acc
    )


def format_report(train_log: dict[str, Any]) -> str:
    """The human-readable train_report.txt."""
    s, sp, fin = train_log["settings"], train_log["split"], train_log["final"]
    lines = [
        f"bnncube train: {s['model']} (ArcFace s={s['arcface_s']:g}, m={s['arcface_m']:g}, "
        f"margin warm-up {s['margin_warmup']} epoch(s))",
        f"data: {s['data']}",
        f"split by identity (seed {s['seed']}): {sp['train_identities']} training identities "
        f"({sp['train_images']} images), {sp['val_identities']} held-out identities "
        f"({sp['val_images']} images, {sp['val_pairs']} validation pairs)",
        f"optimizer Adam, lr {s['lr']:g} with cosine decay, batch {s['global_batch']}, "
        f"{sp['steps_per_epoch']} steps/epoch, strategy {s['strategy']} "
        f"({s['replicas']} replica(s))",
        "",
        "epoch      loss   val pair acc   seconds",
    ]
    for h in train_log["history"]:
        lines.append(
            f"{h['epoch']:5d}  {h['loss']:8.4f}   {h['val_accuracy']:12.4f}   {h['seconds']:7.1f}"
        )
    lines += [
        "",
        f"final held-out pair accuracy: {fin['val_accuracy']}",
        f"model: {fin['model_path']}",
    ]
    if fin["int8_path"]:
        lines.append(f"int8 (PTQ): {fin['int8_path']}")
    return "\n".join(lines) + "\n"
