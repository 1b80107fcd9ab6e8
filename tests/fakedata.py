"""Small datasets written by the tests in the real on-disk formats."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX: 0x0000, type 0x08 (unsigned byte), rank, big-endian int32 dims, data."""
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def pattern_images(n: int, size: int, channels: int = 0, seed: int = 0):
    """Images a network can learn: class k is a bright bar at a k-dependent position."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    shape = (n, size, size) if channels == 0 else (n, channels, size, size)
    images = rng.integers(0, 60, shape).astype(np.uint8)
    for i, k in enumerate(labels):
        r = 2 + int(k) * (size - 4) // 10
        if channels == 0:
            images[i, r:r + 2, :] = 250
        else:
            images[i, :, r:r + 2, :] = 250
    return images, labels.astype(np.uint8)


def write_mnist(folder: Path, n_train: int = 512, n_test: int = 128, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = pattern_images(n, 28, seed=seed)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(arr)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def write_cifar_python(folder: Path, n_per_batch: int = 20, num_classes: int = 10) -> Path:
    """The python version: pickled dicts with bytes keys, as the original Python 2 files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def batch(n):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, num_classes, n).tolist()
        key = b"labels" if num_classes == 10 else b"fine_labels"
        return {b"batch_label": b"batch", key: labels, b"data": data, b"filenames": [b"x.png"] * n}

    if num_classes == 10:
        for i in range(1, 6):
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_per_batch), protocol=2))
        (folder / "test_batch").write_bytes(pickle.dumps(batch(n_per_batch), protocol=2))
        meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    else:
        (folder / "train").write_bytes(pickle.dumps(batch(5 * n_per_batch), protocol=2))
        (folder / "test").write_bytes(pickle.dumps(batch(n_per_batch), protocol=2))
        meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}
        (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_cifar_binary(folder: Path, n_per_batch: int = 20) -> tuple[Path, np.ndarray, np.ndarray]:
    """The binary version: records of <1 label byte><3072 pixel bytes>."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    all_x, all_y = [], []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        y = rng.integers(0, 10, n_per_batch, dtype=np.uint8)
        x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([y[:, None], x], 1).tobytes())
        if name != "test_batch.bin":
            all_x.append(x)
            all_y.append(y)
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    return folder, np.concatenate(all_x).reshape(-1, 3, 32, 32), np.concatenate(all_y)


def write_image_folder(root: Path, n_per_class: int = 6, size: int = 40, classes=("cat", "dog", "fox")):
    """root/{train,val}/<class>/<i>.png (some JPEG), real files Pillow can read."""
    from PIL import Image

    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                arr = rng.integers(0, 80, (size, size + 8, 3), dtype=np.uint8)
                arr[:, :, k] = 230  # class k is tinted in channel k
                ext = "jpg" if i % 3 == 0 else "png"
                Image.fromarray(arr).save(d / f"{i}.{ext}")
    return root
