"""Datasets: readers for the real file formats, and loaders that feed the trainer.

Small datasets (Fashion-MNIST, MNIST, CIFAR) are read whole into one uint8 tensor that
lives on the training device; ``TensorLoader`` augments a whole batch at a time there
(random crop with padding, horizontal flip) with no per-sample Python, as the fastest
CIFAR trainers do. Image folders too large for memory stream through DataLoader workers
(``FolderLoader``). Every reader fails with a ``UserError`` that names the file.

``build_loaders`` turns a training configuration into the loaders a run needs, and
``build_eval_loader`` gives the test split alone for evaluating saved weights.
"""

from __future__ import annotations

import gzip
import io
import logging
import lzma
import math
import os
import pickle
import re
import struct
import tarfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import UserError

log = logging.getLogger("resnetkit")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "folder")
# Channel statistics: "dataset" computes them from the training split (all of an in-memory set,
# up to 512 evenly spaced images of a folder); "imagenet" names the customary ImageNet values.
NORMALIZATIONS = ("dataset", "imagenet")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class ArrayDataset:
    """A whole split in memory: images (N, C, H, W) uint8, labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


# --- IDX (MNIST / Fashion-MNIST) -----------------------------------------------------------

# Deflate cannot expand data more than 1032-fold (zlib's technical details), so a gzip file of
# n bytes holds at most 1032 n: a header claiming more is a lie, refused before reading on.
DEFLATE_MAX_RATIO = 1032
IDX_MAX_RANK = 32  # numpy 1.x's limit on array dimensions (2.x: 64); MNIST itself uses 1 and 3


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not): a magic number giving the type and rank, the
    dimensions as big-endian int32, then the data. Only unsigned bytes (type 0x08) occur in
    (Fashion-)MNIST, and only those are accepted.

    The header is checked against the file's size before the data is read, so a header that
    claims 10^12 images costs nothing; a gzip stream is read no further than the header says."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            gz = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            stream = gzip.GzipFile(fileobj=f) if gz else f
            room = size * DEFLATE_MAX_RATIO if gz else size  # most bytes the file can hold
            magic = stream.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
                raise UserError(f"not an IDX file (bad magic number): {path}")
            dtype, ndim = magic[2], magic[3]
            if dtype != 0x08:
                raise UserError(f"unsupported IDX data type 0x{dtype:02x} (expected unsigned bytes): {path}")
            if ndim > IDX_MAX_RANK:
                raise UserError(f"IDX rank {ndim} is more than {IDX_MAX_RANK} dimensions: {path}")
            head = stream.read(4 * ndim)
            if len(head) < 4 * ndim:
                raise UserError(f"truncated IDX header: {path}")
            dims = struct.unpack(f">{ndim}I", head)
            expected = math.prod(dims)
            if 4 + 4 * ndim + expected > room:
                raise UserError(f"truncated IDX file: {path} is {size} bytes{' compressed' * gz}, too few for "
                                f"the {expected} data bytes its header {dims} says")
            body = stream.read(expected + 1)  # one byte more than the header says: is there more?
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; corrupt deflate data a zlib.error
        raise UserError(f"cannot read {path}: {e}") from None
    if len(body) < expected:
        raise UserError(f"truncated IDX file: {path} holds {len(body)} data bytes, its header {dims} says {expected}")
    if len(body) > expected:
        raise UserError(f"oversized IDX file: {path} holds more than the {expected} data bytes its header {dims} says")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    raise UserError(f"missing file {folder / stem}[.gz]")


def load_idx_split(folder: str | Path, train: bool, classes: list[str] | None = None) -> ArrayDataset:
    """One split of an MNIST-format folder (train-images-idx3-ubyte[.gz] and friends)."""
    folder = Path(folder)
    prefix = "train" if train else "t10k"
    img_path = _find(folder, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3:
        raise UserError(f"expected a 3-dimensional image array, got shape {images.shape}: {img_path}")
    if labels.ndim != 1:
        raise UserError(f"expected a 1-dimensional label array, got shape {labels.shape}: {lbl_path}")
    if len(labels) != len(images):
        raise UserError(f"label count {len(labels)} does not match image count {len(images)}: {lbl_path} "
                        f"(images: {img_path.name})")
    if 0 in images.shape:
        raise UserError(f"no images (shape {images.shape}): {img_path}")
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    if classes is not None and n_classes > len(classes):
        raise UserError(f"label {n_classes - 1} out of range for {len(classes)} classes: {lbl_path}")
    return ArrayDataset(torch.from_numpy(images.copy()).unsqueeze(1),
                        torch.from_numpy(labels.astype(np.int64)),
                        classes or [str(i) for i in range(max(n_classes, 10))])


# --- CIFAR ---------------------------------------------------------------------------------

class _ArrayClass:
    """Stands for numpy.ndarray where a pickle names it: the class argument of ``_reconstruct``.
    The real class is never handed out, since the file could call it with any shape."""


def _empty_array(cls, shape, dtype) -> np.ndarray:
    """numpy's ``_reconstruct``: numpy pickles an array as an empty one that BUILD then fills from
    bytes of the right length. The shape and dtype asked for here are ignored: an object array
    of 10^9 elements would be 8 GB of pointers before BUILD could refuse anything."""
    if cls is not _ArrayClass:
        raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
    return np.empty(0, np.uint8)


def _plain_dtype(spec, align=False, copy=True) -> np.dtype:
    """``numpy.dtype`` for plain numbers only ('u1', 'i8', 'f4', ...); object and structured
    dtypes, which a CIFAR batch never holds, would let the file choose pointers and offsets."""
    if isinstance(spec, bytes):  # Python 2 pickles (the original CIFAR files) spell it as bytes
        spec = spec.decode("latin-1")
    if not isinstance(spec, str) or not re.fullmatch(r"[biuf][1248]", spec):
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not allowed in a CIFAR batch")
    return np.dtype(spec)


def _scalar(dtype, raw=None):
    """``numpy.core.multiarray.scalar``: one number from its bytes."""
    if not isinstance(dtype, np.dtype) or not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError("malformed numpy scalar")
    return np.frombuffer(raw, dtype)[0]


def _latin1(text, encoding="utf-8", errors="strict") -> bytes:
    """``_codecs.encode``, as protocol-2 pickles from Python 3 spell bytes: latin-1 only. Other
    codecs could grow the data (hex doubles it; 30 nested calls in a 600-byte file make 16 GB)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed in a CIFAR batch")
    return text.encode("latin-1")


class _CifarUnpickler(pickle._Unpickler):
    """Admits only what the CIFAR python batches contain: dicts, lists, strings, numbers and
    numpy arrays of numbers. Any other global (os.system, builtins.eval, ...) is refused, so a
    crafted file cannot run code, and the numpy and codec functions a batch needs are replaced
    by checked versions, so it cannot make the reader allocate more than the file holds.

    The pure-Python unpickler, not the C one: the C one sizes its memo table from an index read
    from the file (a 12-byte file can ask for gigabytes). CIFAR batches hold a few thousand
    objects, so the speed hardly matters."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _empty_array,
        ("numpy._core.multiarray", "_reconstruct"): _empty_array,
        ("numpy", "ndarray"): _ArrayClass,
        ("numpy", "dtype"): _plain_dtype,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("_codecs", "encode"): _latin1,
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[module, name]
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")

    def load_build(self) -> None:
        # BUILD calls the object's __setstate__: numpy's for an array (which checks the bytes
        # against the shape) or a dtype in its plain form (no subarray, fields or flags); nothing else.
        obj, state = self.stack[-2], self.stack[-1]
        plain = (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
                 and state[1] in ("<", ">", "|", "=", b"<", b">", b"|", b"=")
                 and state[2:] == (None, None, None, -1, -1, 0))
        if not (type(obj) is np.ndarray or (isinstance(obj, np.dtype) and plain)):
            raise pickle.UnpicklingError(f"cannot set the state of a {type(obj).__name__} in a CIFAR batch")
        super().load_build()

    def load_bytearray8(self) -> None:
        # The pure-Python unpickler allocates a BYTEARRAY8's claimed length (up to 2^63) before
        # reading it. CIFAR batches hold no bytearrays (they came with protocol 5).
        raise pickle.UnpicklingError("bytearray is not allowed in a CIFAR batch")

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build, pickle.BYTEARRAY8[0]: load_bytearray8}


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any malformed pickle: report, do not crash
        raise UserError(f"cannot read CIFAR batch {where}: {e}") from None
    if not isinstance(obj, dict):
        raise UserError(f"not a CIFAR batch (expected a dict): {where}")
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_batch(batch: dict, label_key: str, num_classes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels (N,) of one batch, after checking that they are what a
    CIFAR batch holds: a uint8 array of N x 3072 pixels and N labels in range."""
    data, labels = batch.get("data"), batch.get(label_key)
    if data is None or labels is None:
        raise UserError(f"CIFAR batch lacks 'data' or {label_key!r}: {where}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"CIFAR data must be an N x 3072 array of bytes, got {got}: {where}")
    if len(data) == 0:
        raise UserError(f"CIFAR batch holds no images: {where}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        got = len(labels) if isinstance(labels, (list, np.ndarray)) else type(labels).__name__
        raise UserError(f"label count {got} does not match image count {len(data)}: {where}")
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise UserError(f"CIFAR labels must be integers, got {labels.dtype} of shape {labels.shape}: {where}")
        labels = labels.tolist()
    if not all(isinstance(y, (int, np.integer)) and not isinstance(y, bool) for y in labels):
        raise UserError(f"CIFAR labels must be integers: {where}")
    _check_labels(labels, num_classes, where)
    return data.reshape(-1, 3, 32, 32), np.array(labels, dtype=np.int64)


def _check_labels(labels, num_classes: int, where: str) -> None:
    bad = next((y for y in labels if not 0 <= y < num_classes), None)
    if bad is not None:
        raise UserError(f"CIFAR label {bad} out of range for {num_classes} classes: {where}")


def _class_names(names, num_classes: int, where: str) -> list[str]:
    if not isinstance(names, list) or len(names) != num_classes or \
            not all(isinstance(n, (bytes, str)) for n in names):
        raise UserError(f"expected a list of {num_classes} class names: {where}")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


# Reading archives: what a corrupt .tar, .tar.gz, .tar.bz2 or .tar.xz raises besides TarError.
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


class _Source:
    """Files of a dataset, from a folder or straight out of its .tar.gz."""

    def __init__(self, root: Path) -> None:
        self.root, self.tar, self.members = root, None, {}
        if root.is_file():
            try:
                self.tar = tarfile.open(root)
                self.members = {Path(m.name).name: m for m in self.tar.getmembers() if m.isfile()}
            except _ARCHIVE_ERRORS as e:
                raise UserError(f"cannot open archive {root}: {e}") from None

    def read(self, name: str) -> tuple[bytes, str]:
        if self.tar is not None:
            if name not in self.members:
                raise UserError(f"archive has no file {name}: {self.root}")
            where = f"{self.root}:{name}"
            try:
                return self.tar.extractfile(self.members[name]).read(), where
            except _ARCHIVE_ERRORS as e:
                raise UserError(f"cannot read {where}: {e}") from None
        for candidate in (self.root / name, *self.root.glob(f"*/{name}")):
            if candidate.is_file():
                try:
                    return candidate.read_bytes(), str(candidate)
                except OSError as e:
                    raise UserError(f"cannot read {candidate}: {e.strerror}") from None
        raise UserError(f"missing file {name} in {self.root}")

    def has(self, name: str) -> bool:
        if self.tar is not None:
            return name in self.members
        return (self.root / name).is_file() or any(self.root.glob(f"*/{name}"))


def load_cifar_split(root: str | Path, train: bool, num_classes: int = 10) -> ArrayDataset:
    """CIFAR-10/100 from the python version (tarball or extracted folder) or the binary version."""
    src = _Source(Path(root))
    if num_classes == 10:
        py_names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        bin_names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
        py_meta, label_key, meta_key, bin_meta = "batches.meta", "labels", "label_names", "batches.meta.txt"
    else:
        py_names, bin_names = (["train"], ["train.bin"]) if train else (["test"], ["test.bin"])
        py_meta, label_key, meta_key, bin_meta = "meta", "fine_labels", "fine_label_names", "fine_label_names.txt"

    chunks, labels = [], []
    if src.has(py_names[0]):
        for name in py_names:
            raw, where = src.read(name)
            x, y = _cifar_batch(_unpickle(raw, where), label_key, num_classes, where)
            chunks.append(x)
            labels.append(y)
        classes = None
        if src.has(py_meta):
            raw, where = src.read(py_meta)
            names = _unpickle(raw, where).get(meta_key)
            classes = _class_names(names, num_classes, where) if names is not None else None
    elif src.has(bin_names[0]):
        label_bytes = 1 if num_classes == 10 else 2  # CIFAR-100: coarse then fine label
        record = label_bytes + 3072
        for name in bin_names:
            raw, where = src.read(name)
            if len(raw) == 0 or len(raw) % record:
                raise UserError(f"CIFAR binary file size {len(raw)} is not a multiple of {record}: {where}")
            arr = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
            y = arr[:, label_bytes - 1].astype(np.int64)
            _check_labels(y.tolist(), num_classes, where)
            labels.append(y)
            chunks.append(arr[:, label_bytes:].reshape(-1, 3, 32, 32))
        classes = None
        if src.has(bin_meta):
            raw, where = src.read(bin_meta)
            lines = [line for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]
            classes = _class_names(lines, num_classes, where)
    else:
        raise UserError(f"no CIFAR-{num_classes} batches ({py_names[0]} or {bin_names[0]}) in {root}")
    return ArrayDataset(torch.from_numpy(np.concatenate(chunks).copy()), torch.from_numpy(np.concatenate(labels)),
                        classes or [str(i) for i in range(num_classes)])


# --- choosing a dataset --------------------------------------------------------------------

def load_arrays(name: str, data_dir: str | Path | None, train: bool) -> ArrayDataset:
    """One split of an in-memory dataset by name."""
    if name == "fashion-mnist":
        folder = Path(data_dir) if data_dir else FASHION_MNIST_DIR
        if not folder.exists():
            raise UserError(
                f"Fashion-MNIST not found at {folder}: install it with "
                "`sudo apt-get install dataset-fashion-mnist` or pass --data-dir")
        return load_idx_split(folder, train, FASHION_MNIST_CLASSES)
    if name == "mnist":
        if not data_dir:
            raise UserError("--data mnist needs --data-dir (a folder of MNIST-format IDX files)")
        if not Path(data_dir).exists():
            raise UserError(f"data folder not found: {data_dir}")
        return load_idx_split(data_dir, train)
    if name in ("cifar10", "cifar100"):
        if not data_dir:
            raise UserError(f"--data {name} needs --data-dir (the python or binary version)")
        if not Path(data_dir).exists():
            raise UserError(f"data folder not found: {data_dir}")
        return load_cifar_split(data_dir, train, 10 if name == "cifar10" else 100)
    raise UserError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale."""
    x = images.double().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    # A channel that never varies would be divided by zero: floor its spread at one grey level.
    return x.mean(1).tolist(), x.std(1).clamp(min=1 / 255).tolist()


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N, C, H, W) to normalised float32."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float().div_(255) - m) / s


def erase_boxes(n: int, h: int, w: int, p: float, g: torch.Generator) -> torch.Tensor:
    """Random erasing (Zhong et al., AAAI 2020) for n images of h x w: with probability p, a box
    covering 2-40% of the image with aspect ratio 0.3-3.3. Rows of (top, left, height, width);
    height 0 means no box. Drawn on the CPU from ``g`` so an epoch's boxes are reproducible."""
    area = torch.empty(n).uniform_(0.02, 0.4, generator=g) * h * w
    ratio = torch.empty(n).uniform_(math.log(0.3), -math.log(0.3), generator=g).exp()
    bh = (area * ratio).sqrt().round().clamp(1, h).long()
    bw = (area / ratio).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n, generator=g) * (h - bh + 1)).long()
    left = (torch.rand(n, generator=g) * (w - bw + 1)).long()
    bh = bh * (torch.rand(n, generator=g) < p)
    return torch.stack([top, left, bh, bw], 1)


def apply_erase(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Set each image's box to 0, which in normalised units is the dataset mean."""
    boxes = boxes.to(x.device)
    top, left, bh, bw = (boxes[:, i].view(-1, 1, 1, 1) for i in range(4))
    rows = torch.arange(x.shape[2], device=x.device).view(1, 1, -1, 1)
    cols = torch.arange(x.shape[3], device=x.device).view(1, 1, 1, -1)
    inside = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    return x.masked_fill(inside, 0.0)


class TensorLoader:
    """Batches from a dataset held as one tensor on the training device.

    Every epoch's order and augmentation are drawn up front from a generator seeded by
    (seed, epoch), so epoch e is the same whatever happened before it and a resumed run
    can skip exactly the batches it already did (``start_batch``). Under DDP every rank draws
    the same permutation and augmentation for the whole set and takes every world-th position:
    batch b of the ranks together holds exactly the images, crops and flips of batch b of one
    process at the global batch size.
    """

    def __init__(
        self, data: ArrayDataset, batch_size: int, *, train: bool, mean: list[float], std: list[float],
        device: torch.device | str = "cpu", pad: int = 0, flip: bool = False, alternate_flip: bool = False,
        erase: float = 0.0, seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool | None = None,
    ) -> None:
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size, self.train = batch_size, train
        self.mean, self.std, self.pad, self.flip, self.erase = mean, std, pad, flip, erase
        self.alternate_flip = alternate_flip
        self.translate = True  # the trainer holds it off for --pad-from; read batch by batch
        self.index: torch.Tensor | None = None  # the last batch's image indices (--prune scores them)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        self.device = torch.device(device)
        # Zero-pad once (as the paper's CIFAR recipe), so a random crop is a shifted window.
        self.padded = F.pad(self.images, (pad,) * 4) if pad and train else None

    def __len__(self) -> int:
        n = len(self.labels)
        if self.drop_last:  # every rank takes as many full batches as the smallest shard holds
            return n // self.world_size // self.batch_size
        return math.ceil(len(range(self.rank, n, self.world_size)) / self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0, order: torch.Tensor | None = None):
        """Yield (normalised float images, labels) for one epoch, from ``start_batch`` on. ``order``
        (n image indices, repeats allowed; training only) replaces the epoch's random permutation.
        ``self.index`` holds the indices of the batch last yielded."""
        n = len(self.labels)
        mine = slice(self.rank, None, self.world_size)  # this rank's positions in the epoch's order
        if not self.train:
            idx = torch.arange(n)[mine]
        else:
            if order is None:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            idx = order[mine]
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 7_919)
            shifts = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g)[mine]
            flips = (torch.rand(n, generator=g) < 0.5)[mine]
            if self.alternate_flip:
                # Keller Jordan's "alternating flip" (airbench): each image is flipped at random
                # in epoch 0 and then on every other epoch, so consecutive epochs always show
                # both of its sides. The pattern is per image, not per position in the order.
                first = torch.rand(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + 104_729)) < 0.5
                flips = (first ^ bool(epoch % 2))[idx]
            if self.erase:
                boxes = erase_boxes(n, *self.images.shape[2:], self.erase, g)[mine]
        for b in range(start_batch, len(self)):
            batch = slice(b * self.batch_size, (b + 1) * self.batch_size)
            sel = idx[batch]
            if self.train and self.padded is not None and self.translate:
                x = self._crop(sel, shifts[batch])
            else:
                x = self.images[sel.to(self.device)]
            if self.train and self.flip:
                x = torch.where(flips[batch].to(self.device).view(-1, 1, 1, 1), x.flip(3), x)
            x = normalize(x, self.mean, self.std)
            if self.train and self.erase:
                x = apply_erase(x, boxes[batch])
            self.index = sel
            yield x, self.labels[sel.to(self.device)]

    def sample(self, i: int) -> tuple[torch.Tensor, int]:
        """Image i as stored (uint8, C x H x W, on the CPU) and its label."""
        return self.images[i].cpu(), int(self.labels[i])

    def _crop(self, sel: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        """Random crops for a whole batch by one gather: rows dy..dy+H, cols dx..dx+W."""
        h, w = self.images.shape[2:]
        dev = self.device
        rows = (shifts[:, 0:1] + torch.arange(h)).to(dev)  # (B, H)
        cols = (shifts[:, 1:2] + torch.arange(w)).to(dev)  # (B, W)
        b = sel.to(dev).view(-1, 1, 1)
        out = self.padded[b, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        return out.permute(0, 3, 1, 2)


# --- image folders (streamed) --------------------------------------------------------------

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>``: classes are the sorted sub-folder names.

    Files are decoded by Pillow in DataLoader workers. Training: RandomResizedCrop to
    ``size`` (scale 0.08-1, aspect 3/4-4/3, Szegedy et al. 2015 as torchvision does);
    evaluation: resize the short side to size*256/224, then a center crop. Flips and
    normalisation happen later, on the whole batch. An unreadable file yields ``Unreadable``
    and is skipped by ``collate_skip``, counted and warned about once, never a crash.
    """

    def __init__(self, root: str | Path, train: bool, size: int = 224, seed: int = 0,
                 in_chans: int = 3) -> None:
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"image folder not found: {root}")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not self.classes:
            raise UserError(f"no class sub-folders in {root}")
        self.samples = [
            (str(p), i) for i, c in enumerate(self.classes) for p in sorted((root / c).rglob("*"))
            if p.is_file()
        ]
        if not self.samples:
            raise UserError(f"no files in the class folders of {root}")
        self.root, self.train, self.size, self.seed, self.in_chans = root, train, size, seed, in_chans
        self.epoch = 0
        self.labels = torch.tensor([y for _, y in self.samples])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                check_pixels(im)
                im = im.convert("L" if self.in_chans == 1 else "RGB")
                rng = np.random.default_rng((self.seed, self.epoch, i))
                im = self._random_resized_crop(im, rng) if self.train else self._center_crop(im)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            # Reported by the loader in the main process: a worker's own warning would repeat
            # every epoch and interleave with the progress output.
            return Unreadable(path, image_error(e, path))
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(arr.copy()), label

    def _random_resized_crop(self, im, rng):
        w, h = im.size
        area = w * h
        for _ in range(10):
            target = area * rng.uniform(0.08, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
                return im.resize((self.size, self.size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        return self._center_crop(im)  # fallback for extreme aspect ratios

    def _center_crop(self, im):
        return resize_and_crop(im, round(self.size * 256 / 224), self.size)


def check_pixels(im: Image.Image) -> None:
    """Refuse, before decoding, an image over Pillow's decompression-bomb limit (89 million
    pixels, ~360 MB as RGB). Pillow itself only warns up to twice that, and a small file can
    claim it: a 10 000 x 9 000 PNG of zeros is 90 kB."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and im.width * im.height > limit:
        raise Image.DecompressionBombError(f"{im.width} x {im.height} pixels, more than the limit of {limit}")


def image_error(e: Exception, path: str | Path) -> str:
    """Why Pillow could not read ``path``, without the path it repeats in its message."""
    path = str(path)
    return str(e).replace(repr(path), "").replace(path, "").strip(" :") or type(e).__name__


class Unreadable(NamedTuple):
    """What ``ImageFolder`` yields for a file Pillow cannot read."""

    path: str
    reason: str


RESIZE_MAX_PIXELS = 4096 * 4096  # the largest intermediate image resize_and_crop makes (64 MB as RGB)


def resize_and_crop(im: Image.Image, short: int, size: int) -> Image.Image:
    """The evaluation transform: the short side resized to ``short`` (bilinear), then the
    central ``size`` x ``size`` square (torchvision's Resize + CenterCrop).

    An image so elongated that the resized whole would exceed ``RESIZE_MAX_PIXELS`` (a 1 x 60 000
    strip resized to a short side of 256 is 15 million pixels long) has just the crop's box of the
    source resampled: the same pixels up to rounding (within 2 of 255), without the intermediate."""
    w, h = im.size
    scale = short / min(w, h)
    rw, rh = max(short, round(w * scale)), max(short, round(h * scale))
    x0, y0 = (rw - size) // 2, (rh - size) // 2
    if rw * rh > RESIZE_MAX_PIXELS and size <= short:
        sx, sy = w / rw, h / rh
        return im.resize((size, size), Image.BILINEAR, box=(x0 * sx, y0 * sy, (x0 + size) * sx, (y0 + size) * sy))
    return im.resize((rw, rh), Image.BILINEAR).crop((x0, y0, x0 + size, y0 + size))


def collate_skip(batch):
    """Stack the readable samples: (images, labels, the ``Unreadable`` ones, which were readable)."""
    keep = torch.tensor([not isinstance(b, Unreadable) for b in batch], dtype=torch.bool)
    bad = [b for b in batch if isinstance(b, Unreadable)]
    good = [b for b in batch if not isinstance(b, Unreadable)]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad, keep
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), bad, keep


class FolderLoader:
    """Streams an ``ImageFolder`` through DataLoader workers; same interface as TensorLoader.

    Training order comes from PyTorch's ``DistributedSampler`` (shuffled by (seed, epoch) via
    ``set_epoch``; with several ranks each takes a disjoint share and the tail is dropped so all
    take as many). Evaluation takes every world-th image with no padding, so each test image is
    counted exactly once (DistributedSampler would repeat some to even out the shares). Flips and
    erase boxes are drawn up front per position in the epoch, so a run resumed mid-epoch
    (``start_batch``) sees the same augmentation as one that never stopped.
    """

    def __init__(self, data: ImageFolder, batch_size: int, *, train: bool, mean: list[float],
                 std: list[float], device: torch.device | str = "cpu", flip: bool = False,
                 erase: float = 0.0, workers: int = 2, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.data, self.batch_size, self.train = data, batch_size, train
        self.mean, self.std, self.flip, self.erase = mean, std, flip, erase
        self.device = torch.device(device)
        self.workers, self.seed, self.rank, self.world_size = workers, seed, rank, world_size
        self.skipped = 0  # unreadable images met, counted each time
        self.warned: set[str] = set()  # ... and reported once each
        self.labels = data.labels

    def __len__(self) -> int:
        if self.train:
            return len(self.data) // self.world_size // self.batch_size
        return math.ceil(len(range(self.rank, len(self.data), self.world_size)) / self.batch_size)

    def sample(self, i: int) -> tuple[torch.Tensor, int] | Unreadable:
        """Image i as the dataset's transform makes it (uint8, C x H x W) and its label."""
        return self.data[i]

    def _order(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch``, in order."""
        if not self.train:
            return list(range(self.rank, len(self.data), self.world_size))
        sampler = torch.utils.data.DistributedSampler(self.data, num_replicas=self.world_size, rank=self.rank,
                                                      shuffle=True, seed=self.seed, drop_last=True)
        sampler.set_epoch(epoch)
        return list(sampler)

    def epoch(self, epoch: int, start_batch: int = 0):
        self.data.epoch = epoch
        order = self._order(epoch)
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 7_919 + 1_000_003 * self.rank)
            flips = torch.rand(len(order), generator=g) < 0.5
            if self.erase:
                boxes = erase_boxes(len(order), self.data.size, self.data.size, self.erase, g)
        end = len(self) * self.batch_size if self.train else len(order)
        positions = list(range(start_batch * self.batch_size, end))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.data, [order[p] for p in positions]), batch_size=self.batch_size,
            shuffle=False, num_workers=self.workers, collate_fn=collate_skip, persistent_workers=False,
            pin_memory=self.device.type == "cuda",
            # Its own generator: a DataLoader otherwise draws its base seed from torch's global
            # one, and a resumed epoch (one more iterator) would shift every draw after it.
            generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        for b, (x, y, bad, keep) in enumerate(loader):
            self.skipped += len(bad)
            for path, reason in bad:
                if path not in self.warned:
                    self.warned.add(path)
                    log.warning("skipped 1 unreadable image: %s (%s); it is left out of every epoch", path, reason)
            if len(y) == 0:
                continue
            pos = torch.tensor(positions[b * self.batch_size:(b + 1) * self.batch_size])[keep]
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.train and self.flip:
                x = torch.where(flips[pos].to(self.device).view(-1, 1, 1, 1), x.flip(3), x)
            x = normalize(x, self.mean, self.std)
            if self.train and self.erase:
                x = apply_erase(x, boxes[pos])
            yield x, y


def folder_stats(data: ImageFolder, n: int = 512) -> tuple[list[float], list[float]]:
    """Channel statistics estimated from up to n evenly spaced images, center-cropped."""
    was_train, data.train = data.train, False
    step = max(1, len(data) // n)
    items = [data[i] for i in range(0, len(data), step)]
    data.train = was_train
    good = [it for it in items if not isinstance(it, Unreadable)]
    if not good:
        raise UserError(f"no readable images to compute statistics from in {data.root}")
    return channel_stats(torch.stack([x for x, _ in good]))


# --- from a configuration to loaders ---------------------------------------------------------

def first_images(loader: TensorLoader | FolderLoader, n: int) -> torch.Tensor:
    """Up to ``n`` normalised training images, the same on every call and every rank (in-memory
    sets: the first n as stored; image folders: the first batches of epoch 0, on the CPU)."""
    if isinstance(loader, TensorLoader):
        return normalize(loader.images[:n], loader.mean, loader.std)
    out, have = [], 0
    for x, _ in loader.epoch(0):
        out.append(x.cpu())
        have += len(x)
        if have >= n:
            break
    return torch.cat(out)[:n]


class Loaders(NamedTuple):
    train: TensorLoader | FolderLoader
    test: TensorLoader | FolderLoader
    classes: list[str]
    in_chans: int
    mean: list[float]
    std: list[float]


def _eval_folder(root: Path) -> Path | None:
    """The evaluation split of an image-folder dataset: ``val/`` or ``test/`` beside ``train/``."""
    return next((root / d for d in ("val", "test") if (root / d).is_dir()), None)


def _first(data: ArrayDataset, n: int) -> ArrayDataset:
    return replace(data, images=data.images[:n], labels=data.labels[:n]) if n else data


def build_loaders(cfg, device: torch.device, rank: int = 0, world: int = 1) -> Loaders:
    """The training and test loaders a ``TrainConfig`` asks for, normalised as it says. With
    ``world`` processes, ``cfg.batch_size`` is the global batch: each rank loads its share of
    every training batch and its share of the test set (every test image on exactly one rank)."""
    batch = cfg.batch_size // world
    if cfg.data == "folder":
        if not cfg.data_dir:
            raise UserError("--data folder needs --data-dir (with train/ and val/ sub-folders)")
        for name in ("holdout", "alternate_flip", "prune"):
            if getattr(cfg, name):
                raise UserError(f"--{name.replace('_', '-')} works with the in-memory datasets (fashion-mnist, "
                                "mnist, cifar10, cifar100), not --data folder")
        root = Path(cfg.data_dir)
        train_root = root / "train" if (root / "train").is_dir() else root
        test_root = _eval_folder(root)
        if test_root is None:
            raise UserError(f"no val/ or test/ folder beside train/ in {root}")
        train_set = ImageFolder(train_root, True, cfg.image_size, cfg.seed)
        test_set = ImageFolder(test_root, False, cfg.image_size, cfg.seed)
        if train_set.classes != test_set.classes:
            raise UserError(f"class folders of {train_root} and {test_root} differ")
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.normalize == "imagenet" else folder_stats(train_set)
        common = {"mean": mean, "std": std, "device": device, "flip": cfg.flip, "workers": cfg.workers,
                  "seed": cfg.seed, "rank": rank, "world_size": world}
        train = FolderLoader(train_set, batch, train=True, erase=cfg.erase, **common)
        test = FolderLoader(test_set, cfg.eval_batch_size, train=False, **common)
        return Loaders(train, test, train_set.classes, 3, mean, std)

    train_set = load_arrays(cfg.data, cfg.data_dir, train=True)
    if cfg.holdout:  # tune on the training set's last images, never on the test split
        if cfg.holdout >= len(train_set.labels):
            raise UserError(f"--holdout {cfg.holdout} leaves no training images of {len(train_set.labels)}")
        cut = len(train_set.labels) - cfg.holdout
        test_set = replace(train_set, images=train_set.images[cut:], labels=train_set.labels[cut:])
        train_set = _first(train_set, cut)
    else:
        test_set = load_arrays(cfg.data, cfg.data_dir, train=False)
    train_set, test_set = _first(train_set, cfg.train_subset), _first(test_set, cfg.test_subset)
    in_chans = train_set.images.shape[1]
    if cfg.normalize == "imagenet":
        if in_chans != 3:
            raise UserError(f"--normalize imagenet needs colour images; {cfg.data} has {in_chans} channel(s)")
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = channel_stats(train_set.images)
    train = TensorLoader(train_set, batch, train=True, mean=mean, std=std, device=device,
                         pad=cfg.pad, flip=cfg.flip, alternate_flip=cfg.alternate_flip, erase=cfg.erase,
                         seed=cfg.seed, rank=rank, world_size=world)
    test = TensorLoader(test_set, cfg.eval_batch_size, train=False, mean=mean, std=std, device=device,
                        rank=rank, world_size=world)
    return Loaders(train, test, train_set.classes, in_chans, mean, std)


def build_eval_loader(data: str, data_dir: str | None, *, mean, std, device, batch_size: int,
                      image_size: int = 224, in_chans: int = 3, workers: int = 2,
                      test_subset: int = 0) -> tuple[TensorLoader | FolderLoader, list[str]]:
    """The test split alone, normalised with the training statistics: (loader, class names)."""
    if data == "folder":
        root = Path(data_dir or "")
        test_set = ImageFolder(_eval_folder(root) or root, False, image_size, in_chans=in_chans)
        if mean is None:
            mean, std = folder_stats(test_set)
        loader = FolderLoader(test_set, batch_size, train=False, mean=mean, std=std, device=device,
                              workers=workers)
        return loader, test_set.classes
    test_set = _first(load_arrays(data, data_dir, train=False), test_subset)
    if mean is None:
        mean, std = channel_stats(load_arrays(data, data_dir, train=True).images)
    return TensorLoader(test_set, batch_size, train=False, mean=mean, std=std, device=device), test_set.classes
