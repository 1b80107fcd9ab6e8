"""Hostile inputs (guarantee 4): every reader of a file a user hands us, fuzzed with hypothesis.

Each reader gets (a) arbitrary bytes and (b) mutations of a valid file: header fields set to
random or extreme values, bit flips, truncations, bytes spliced in or cut out. It must return
data consistent with what the file says, or raise ``UserError`` naming the file. Anything else
fails: another exception, a hang, or an allocation far beyond what the file holds. ``bounded``
enforces the last two with an alarm and an address-space limit, so that a runaway allocation
fails here with a MemoryError instead of taking the (shared) machine down.

Examples per test are sized for the whole module to run in well under a minute on one thread;
``HYPOTHESIS_FUZZ_SCALE=20`` multiplies them for a longer hunt.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import pickletools
import resource
import signal
import struct
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fakedata import idx_bytes, write_cifar_binary, write_cifar_python, write_mnist
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnetkit import checkpoint, config, data, report, rundir
from resnetkit.errors import UserError
from resnetkit.registry import create_model

SCALE = int(os.environ.get("HYPOTHESIS_FUZZ_SCALE", "1"))


def fuzz(n: int):
    """Hypothesis settings for n examples: no deadline (the machine is shared, timings are noisy;
    ``bounded`` catches real hangs), one tmp_path reused by all examples, no example database
    (a failure is printed with the input that caused it)."""
    return settings(max_examples=n * SCALE, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# --------------------------------------------------------------------------------------------
# The bounds every reader runs under, and the one rule every reader obeys.

class Hang(BaseException):
    """Raised by the alarm: a BaseException, so that no reader's ``except Exception`` hides it."""


def _address_space() -> int | None:
    """Bytes of address space this process has mapped (Linux), or None where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def bounded(seconds: float = 10, headroom: int = 1 << 30):
    """At most ``seconds`` and ``headroom`` bytes of new address space (1 GiB: far more than any
    file here justifies, far less than the machine has)."""
    def alarm(signum, frame):
        raise Hang(f"still reading after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _address_space()
    if mapped is not None:
        limit = mapped + headroom if hard == resource.RLIM_INFINITY else min(mapped + headroom, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(read, path: Path, **bounds):
    """``read()`` under the bounds: what it returned, or None where it raised a UserError that
    names ``path``. A UserError that hides an allocation failure (the reader hit the limit, then
    reported it as bad input) is an unbounded allocation all the same."""
    with bounded(**bounds):
        try:
            return read()
        except UserError as e:
            assert path.name in str(e), f"the error does not name {path.name}: {e}"
            cause = e
            while cause is not None:  # PyTorch's CPU allocator says so with a RuntimeError
                assert not (isinstance(cause, MemoryError) or "can't allocate memory" in str(cause)), \
                    f"ran out of memory reading {path.name}: {e}"
                cause = cause.__context__
            return None


def put(path: Path, raw: bytes) -> None:
    """Write a fresh file: rewriting one in place costs ext4 a flush (auto_da_alloc), 3 ms a time."""
    path.unlink(missing_ok=True)
    path.write_bytes(raw)


def restore(folder: Path, good: dict[str, bytes]) -> None:
    """Undo the previous example's damage to a folder of valid files."""
    for name, raw in good.items():
        if (folder / name).read_bytes() != raw:
            put(folder / name, raw)


def valid_folder(tmp_path: Path, name: str, make) -> tuple[Path, dict[str, bytes]]:
    """A folder of valid files, made by ``make(folder)`` once per test and restored before each
    example: (the folder, its files' valid bytes by name)."""
    folder, cache = tmp_path / name, tmp_path / f"{name}.good"
    if not cache.exists():
        make(folder)
        cache.write_bytes(pickle.dumps({f.name: f.read_bytes() for f in folder.iterdir()}))
    good = pickle.loads(cache.read_bytes())
    restore(folder, good)
    return folder, good


# --------------------------------------------------------------------------------------------
# Mutations of a valid file.

def extremes(bits: int) -> list[int]:
    top = (1 << bits) - 1
    return sorted({0, 1, 2, 3, 7, 255 & top, 256 & top, 3072 & top, 10**6 & top, 10**9 & top,
                   top >> 1, (top >> 1) + 1, top - 1, top})


@st.composite
def mutated(draw, valid: bytes, fields: tuple[tuple[int, str], ...] = ()) -> bytes:
    """``valid`` after one to four edits. ``fields`` lists header fields as (offset, struct
    format of an unsigned integer); those get extreme or random values."""
    b = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "cut"] + ["field"] * 3 * bool(fields)))
        if kind == "field":
            offset, fmt = draw(st.sampled_from(fields))
            if offset + struct.calcsize(fmt) <= len(b):
                bits = 8 * struct.calcsize(fmt)
                value = draw(st.sampled_from(extremes(bits)) | st.integers(0, (1 << bits) - 1))
                b[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
        elif kind == "flip" and b:
            b[draw(st.integers(0, len(b) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del b[draw(st.integers(0, len(b))):]
        elif kind == "splice":
            at = draw(st.integers(0, len(b)))
            b[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "cut" and b:
            at = draw(st.integers(0, len(b) - 1))
            del b[at:at + draw(st.integers(1, 64))]
    return bytes(b)


junk = st.binary(max_size=600)


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST), raw and gzipped.

IDX_FIELDS = ((2, ">B"), (3, ">B"), (4, ">I"), (8, ">I"), (12, ">I"))


def valid_idx(ndim: int) -> bytes:
    shape = (3, 4, 5)[:ndim] if ndim != 1 else (6,)
    return idx_bytes(np.arange(np.prod(shape), dtype=np.uint8).reshape(shape))


def check_idx(arr, raw: bytes) -> None:
    """A returned array is what the (decompressed) file says: its header's shape, its bytes."""
    plain = gzip.GzipFile(fileobj=io.BytesIO(raw)).read(2**20) if raw[:2] == b"\x1f\x8b" else raw
    ndim = plain[3]
    assert arr.dtype == np.uint8 and plain[:3] == b"\x00\x00\x08"
    assert arr.shape == struct.unpack(f">{ndim}I", plain[4:4 + 4 * ndim])
    assert arr.tobytes() == plain[4 + 4 * ndim:4 + 4 * ndim + arr.size]


idx_files = st.one_of(
    junk, junk.map(gzip.compress), junk.map(lambda b: b"\x1f\x8b" + b),
    st.sampled_from([1, 3]).flatmap(lambda n: mutated(valid_idx(n), IDX_FIELDS)),
    st.sampled_from([1, 3]).flatmap(lambda n: mutated(valid_idx(n), IDX_FIELDS)).map(gzip.compress),
    st.sampled_from([1, 3]).flatmap(lambda n: mutated(gzip.compress(valid_idx(n)))),
)


@fuzz(300)
@given(raw=idx_files)
def test_read_idx_survives_any_bytes(tmp_path, raw):
    path = tmp_path / "fuzzed-idx3-ubyte"
    put(path, raw)
    arr = outcome(lambda: data.read_idx(path), path)
    if arr is not None:
        check_idx(arr, raw)


@fuzz(150)
@given(which=st.sampled_from(["images-idx3", "labels-idx1"]), seed=st.data())
def test_mnist_split_survives_a_corrupt_file(tmp_path, which, seed):
    folder, good = valid_folder(tmp_path, "mnist", lambda f: write_mnist(f, 8, 6, gz=False))
    path = folder / f"t10k-{which}-ubyte"
    put(path, seed.draw(mutated(good[path.name], IDX_FIELDS)))
    # A mismatch between the two files may be reported against either: both names are in the message.
    ds = outcome(lambda: data.load_idx_split(folder, train=False, classes=[str(i) for i in range(10)]), path)
    if ds is not None:
        n = len(ds.labels)
        assert ds.images.dtype == torch.uint8 and ds.images.ndim == 4 and ds.images.shape[:2] == (n, 1)
        assert ds.labels.dtype == torch.int64 and int(ds.labels.max()) < 10 and min(ds.images.shape) > 0


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dims", [(10**6, 10**6, 28, 28), (2**32 - 1, 28, 28), (2**32 - 1,) * 8])
def test_idx_header_claiming_10_to_the_12_images_is_refused_before_reading(tmp_path, gz, dims):
    raw = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + bytes(4096)
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    start = time.perf_counter()
    with pytest.raises(UserError, match="truncated IDX file.*huge-idx3-ubyte"):
        with bounded(seconds=5, headroom=64 << 20):  # 64 MiB: no room to even try
            data.read_idx(path)
    assert time.perf_counter() - start < 1


def test_idx_gzip_bomb_is_read_no_further_than_its_header_says(tmp_path):
    # An honest-looking header for 10 images, then 256 MB of zeros that deflate to 1 MB.
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    parts = [z.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8)))]
    parts += [z.compress(bytes(1 << 20)) for _ in range(256)]
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(b"".join(parts) + z.flush())
    with pytest.raises(UserError, match="oversized IDX file.*bomb-idx3-ubyte.gz"):
        with bounded(seconds=5, headroom=64 << 20):
            data.read_idx(path)


def test_idx_rank_beyond_numpy_is_refused(tmp_path):
    path = tmp_path / "deep-idx1-ubyte"  # 255 dimensions of 1: one byte of data, a legal IDX header
    path.write_bytes(bytes([0, 0, 8, 255]) + struct.pack(">255I", *[1] * 255) + b"\x07")
    with pytest.raises(UserError, match="rank 255.*deep-idx1-ubyte"):
        data.read_idx(path)


# --------------------------------------------------------------------------------------------
# CIFAR, python version: pickles through the restricted unpickler.

def pickle_fields(raw: bytes) -> tuple[tuple[int, str], ...]:
    """The integer arguments of a pickle's opcodes (lengths, memo indices, numbers), as fields."""
    fmts = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
    found = []
    for op, _, pos in pickletools.genops(raw):
        if op.arg is not None and op.arg.n in fmts:
            found.append((pos + 1, fmts[op.arg.n]))
    return tuple(found)


arrays = st.builds(lambda shape, dtype: np.ones(shape, dtype),
                   st.sampled_from([(), (0,), (2,), (3072,), (0, 3072), (1, 3072), (2, 3072), (2, 3073),
                                    (3072, 2), (2, 3, 32, 32), (2, 0)]),
                   st.sampled_from([np.uint8, np.int8, np.int64, np.float32, np.bool_, np.uint16]))
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=8) | st.text(max_size=8)
    | arrays,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=6), inner, max_size=3),
    max_leaves=8)
label_lists = st.lists(st.integers(-2, 12) | st.booleans() | st.floats() | st.text(max_size=2), max_size=4)
batches = st.builds(
    lambda d, y, proto, extra: pickle.dumps({b"data": d, b"labels": y, **extra}, protocol=proto),
    arrays | values, label_lists | values | arrays, st.integers(0, 4),
    st.dictionaries(st.binary(max_size=6), values, max_size=2))
meta_pickles = st.builds(lambda names, proto: pickle.dumps({b"label_names": names}, protocol=proto),
                         st.lists(st.binary(max_size=6) | st.text(max_size=4), min_size=9, max_size=11) | values,
                         st.integers(0, 4))

# Pickles made to make the reader allocate what the file does not hold.
HOSTILE_PICKLES = {
    # LONG_BINPUT with index 2^30: the C unpickler grows its memo table to 2^31 pointers (16 GB).
    "memo index": b"\x80\x02}r" + struct.pack("<I", 2**30) + b".",
    # numpy.ndarray((10^9,), 'O'): 8 GB of None pointers.
    "object array": b"cnumpy\nndarray\n((I1000000000\ntVO\ntR.",
    # _reconstruct asked for an object array of 10^9 elements before BUILD can check anything.
    "reconstruct": b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I1000000000\ntcnumpy\ndtype\n"
                   b"(VO8\nI0\nI1\ntRtR.",
    # _codecs.encode(x, 'hex') nested 40 times: 2^40 bytes from a 1 KB file.
    "hex chain": b"(dVdata\n" + (b"c_codecs\nencode\n(" * 40) + b"c_codecs\nencode\n(VX\nVlatin1\ntR"
                 + b"Vhex\ntR" * 40 + b"s.",
    # A dtype whose state claims a subarray of 10^9 elements.
    "dtype subarray": b"cnumpy\ndtype\n(Vu1\nI0\nI1\ntR(I3\nV|\n(cnumpy\ndtype\n(Vu1\nI0\nI1\ntR(I1000000000\nt"
                      b"tNNI-1\nI-1\nI0\ntb.",
    # BINBYTES8 claiming 2^40 bytes.
    "bytes length": b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc",
}


def cifar_folder(tmp_path: Path, binary: bool = False) -> tuple[Path, dict[str, bytes]]:
    """A valid CIFAR-10 folder, two images a batch."""
    if binary:
        return valid_folder(tmp_path, "cifar-bin", lambda f: write_cifar_binary(f, 2))
    return valid_folder(tmp_path, "cifar-py", lambda f: write_cifar_python(f, 2))


def check_cifar(ds, num_classes: int = 10) -> None:
    n = len(ds.labels)
    assert n > 0 and ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and 0 <= int(ds.labels.min()) and int(ds.labels.max()) < num_classes
    assert len(ds.classes) == num_classes and all(isinstance(c, str) for c in ds.classes)


@fuzz(300)
@given(name=st.sampled_from(["test_batch", "batches.meta"]), seed=st.data())
def test_cifar_python_survives_any_pickle(tmp_path, name, seed):
    folder, good = cifar_folder(tmp_path)
    valid = good[name]
    raw = seed.draw(st.one_of(junk, mutated(valid, pickle_fields(valid)),
                              batches if name == "test_batch" else meta_pickles))
    path = folder / name
    put(path, raw)
    ds = outcome(lambda: data.load_cifar_split(folder, train=False), path)
    if ds is not None:
        check_cifar(ds)


@pytest.mark.parametrize("attack", sorted(HOSTILE_PICKLES))
def test_cifar_pickle_cannot_make_the_reader_allocate(tmp_path, attack):
    folder, _ = cifar_folder(tmp_path)
    path = folder / "test_batch"
    path.write_bytes(HOSTILE_PICKLES[attack])
    # 256 MiB: each of these asks for gigabytes; a reader that tried would hit the limit.
    assert outcome(lambda: data.load_cifar_split(folder, train=False), path, headroom=256 << 20) is None


def py2_pickle(x: np.ndarray, labels: list[int]) -> bytes:
    """A batch as the original CIFAR files are: pickled by Python 2 (protocol 2, str as bytes)."""
    def s(b):
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b

    def i(v):
        return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)

    out = b"\x80\x02}(" + s(b"batch_label") + s(b"testing batch 1 of 1") + s(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
    out += b"(" + i(1) + b"M" + struct.pack("<H", x.shape[0]) + b"M" + struct.pack("<H", x.shape[1]) + b"\x86"
    out += b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1)
    out += i(0) + b"tb\x89" + s(x.tobytes()) + b"tb" + s(b"labels") + b"](" + b"".join(i(v) for v in labels)
    return out + b"eu."


def test_restricted_unpickler_still_reads_python2_cifar_batches(tmp_path):
    folder, _ = cifar_folder(tmp_path)
    x = np.random.default_rng(0).integers(0, 256, (7, 3072), dtype=np.uint8)
    raw = py2_pickle(x, [0, 1, 2, 3, 4, 5, 9])
    assert np.array_equal(pickle.loads(raw, encoding="bytes")[b"data"], x)  # the hand-made pickle is right
    (folder / "test_batch").write_bytes(raw)
    ds = data.load_cifar_split(folder, train=False)
    assert np.array_equal(ds.images.reshape(7, -1).numpy(), x) and ds.labels.tolist() == [0, 1, 2, 3, 4, 5, 9]


@fuzz(150)
@given(name=st.sampled_from(["test_batch.bin", "batches.meta.txt"]), seed=st.data())
def test_cifar_binary_survives_any_bytes(tmp_path, name, seed):
    folder, good = cifar_folder(tmp_path, binary=True)
    path = folder / name
    put(path, seed.draw(junk | mutated(good[name]) | st.just(good[name][:3073] + b"\x0a" + good[name][3074:])))
    ds = outcome(lambda: data.load_cifar_split(folder, train=False), path)
    if ds is not None:
        check_cifar(ds)


@pytest.mark.parametrize("label", [10, 255])
def test_cifar_binary_label_out_of_range_names_the_file(tmp_path, label):
    folder, good = cifar_folder(tmp_path, binary=True)
    (folder / "test_batch.bin").write_bytes(bytes([label]) + good["test_batch.bin"][1:])
    with pytest.raises(UserError, match=f"label {label} out of range.*test_batch.bin"):
        data.load_cifar_split(folder, train=False)


def cifar_archive(tmp_path: Path, mode: str) -> bytes:
    cache = tmp_path / f"archive.{mode}"
    if not cache.exists():
        folder, _ = cifar_folder(tmp_path)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=f"w:{mode}") as t:
            for name in ("test_batch", "batches.meta"):
                t.add(folder / name, arcname=f"cifar-10-batches-py/{name}")
        cache.write_bytes(buf.getvalue())
    return cache.read_bytes()


@fuzz(100)
@given(mode=st.sampled_from(["gz", "", "xz"]), seed=st.data())
def test_cifar_archive_survives_any_bytes(tmp_path, mode, seed):
    valid = cifar_archive(tmp_path, mode)
    path = tmp_path / "cifar-10-python.tar.gz"
    put(path, seed.draw(junk | mutated(valid)))
    ds = outcome(lambda: data.load_cifar_split(path, train=False), path)
    if ds is not None:
        check_cifar(ds)


def test_tar_member_claiming_8_gb_is_refused(tmp_path):
    folder, good = cifar_folder(tmp_path)
    info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
    info.size = 8 * 10**9
    path = tmp_path / "lying.tar"
    path.write_bytes(info.tobuf(format=tarfile.USTAR_FORMAT) + good["test_batch"] + bytes(1024))
    assert outcome(lambda: data.load_cifar_split(path, train=False), path, headroom=256 << 20) is None


# --------------------------------------------------------------------------------------------
# Image folders: files decoded by Pillow.

def png_chunks_fixed(b: bytes) -> bytes:
    """Recompute every PNG chunk's CRC, so that a mutated header is read, not refused for its CRC."""
    out, pos = bytearray(b[:8]), 8
    while pos + 12 <= len(b):
        n = struct.unpack(">I", b[pos:pos + 4])[0]
        body = b[pos + 4:pos + 8 + n]
        if pos + 12 + n > len(b):
            break
        out += b[pos:pos + 4] + body + struct.pack(">I", zlib.crc32(body))
        pos += 12 + n
    return bytes(out + b[pos:])


def valid_image(fmt: str, mode: str) -> bytes | None:
    """A small image in ``fmt``, or None where Pillow cannot write that mode in that format."""
    arr = np.random.default_rng(0).integers(0, 256, (9, 12, 3), dtype=np.uint8)
    buf = io.BytesIO()
    try:
        Image.fromarray(arr).convert(mode).save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return None
    return buf.getvalue()


IMAGE_FIELDS = {  # header fields: width and height, and a few neighbours
    "PNG": ((16, ">I"), (20, ">I"), (24, ">B"), (25, ">B"), (28, ">B")),
    "BMP": ((18, "<I"), (22, "<I"), (28, "<H"), (10, "<I"), (30, "<I")),
    "GIF": ((6, "<H"), (8, "<H"), (10, "<B")),
    "JPEG": (), "TIFF": (), "WEBP": (), "ICO": (), "PPM": (),
}
VALID_IMAGES = {(fmt, mode): raw for fmt in IMAGE_FIELDS for mode in ("RGB", "L", "P", "RGBA", "I;16")
                if (raw := valid_image(fmt, mode)) is not None}


@st.composite
def image_files(draw) -> tuple[str, bytes]:
    fmt, mode = draw(st.sampled_from(sorted(VALID_IMAGES)))
    raw = draw(junk | mutated(VALID_IMAGES[fmt, mode], IMAGE_FIELDS[fmt]))
    if fmt == "PNG" and draw(st.booleans()):
        raw = png_chunks_fixed(raw)
    return fmt, raw


def read_image(root: Path, train: bool, size: int = 16):
    ds = data.ImageFolder(root, train=train, size=size)
    return ds[0]


def check_image(item, path: Path, size: int = 16) -> None:
    if isinstance(item, data.Unreadable):
        assert item.path == str(path) and item.reason
    else:
        x, label = item
        assert x.dtype == torch.uint8 and x.shape == (3, size, size) and label == 0


@fuzz(400)
@given(image=image_files(), train=st.booleans())
def test_image_folder_survives_any_file(tmp_path, image, train):
    fmt, raw = image
    folder = tmp_path / "imgs" / "cls"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():  # one file in the folder: this example's
        old.unlink()
    path = folder / f"x.{fmt.lower()}"
    put(path, raw)
    # A file Pillow cannot read is Unreadable (skipped and warned about), not an exception.
    check_image(outcome(lambda: read_image(path.parent.parent, train), path), path)


def png(width: int, height: int, rows) -> bytes:
    """A greyscale PNG written by hand, streaming its rows, so a huge image costs nothing to make."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\x00" + row) for row in rows) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width,height", [(100_000, 100_000), (10_000, 9_000)])
def test_image_beyond_pillows_bomb_limit_is_unreadable_before_decoding(tmp_path, width, height):
    path = tmp_path / "imgs" / "cls" / "bomb.png"
    path.parent.mkdir(parents=True)
    # (10 000 x 9 000 is over Pillow's limit, where it only warns; its 90 MB of zeros deflate to 90 kB.)
    path.write_bytes(png(width, height, (bytes(width) for _ in range(height if width < 50_000 else 1))))
    for train in (True, False):
        item = outcome(lambda t=train: read_image(path.parent.parent, t), path, seconds=5, headroom=128 << 20)
        assert isinstance(item, data.Unreadable) and "pixels" in item.reason


@pytest.mark.parametrize("train", [True, False])
def test_extreme_aspect_ratio_is_resized_within_bounds(tmp_path, train):
    path = tmp_path / "imgs" / "cls" / "strip.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(png(1, 60_000, (b"\x80" for _ in range(60_000))))  # 60 kpx, a few hundred bytes
    # Resized so its short side is 18 px (then center-cropped to 16), it would be 18 x 1 080 000
    # (and 256 x 15 million at ImageNet's 224): the crop must be made without that intermediate.
    item = outcome(lambda: read_image(path.parent.parent, train), path, headroom=64 << 20)
    check_image(item, path)
    assert not isinstance(item, data.Unreadable)


def test_resize_and_crop_without_the_intermediate_matches_within_rounding():
    strip = Image.fromarray(np.random.default_rng(0).integers(0, 256, (3000, 40, 3), dtype=np.uint8))
    w, h = strip.size
    full = np.asarray(strip.resize((256, round(h * 256 / w)), Image.BILINEAR), dtype=int)
    y0 = (full.shape[0] - 224) // 2
    small = np.asarray(data.resize_and_crop(strip, 256, 224), dtype=int)
    assert np.abs(full[y0:y0 + 224, 16:240] - small).max() <= 2


# --------------------------------------------------------------------------------------------
# YAML configuration files (config.py).

VALID_YAML = config.to_yaml(config.TrainConfig()).encode()
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
yaml_docs = st.dictionaries(st.sampled_from(sorted(config.FIELDS)) | st.text(max_size=8), yaml_values,
                            max_size=5).map(lambda d: yaml.safe_dump(d).encode())
# Billion laughs: nine references to nine references ... to nine numbers; 9^10 numbers once expanded.
YAML_BOMB = b"blocks: [&a [1, 1, 1, 1, 1, 1, 1, 1, 1], " + b", ".join(
    b"&%s [%s]" % (bytes([c]), b", ".join([b"*" + bytes([c - 1])] * 9)) for c in range(98, 107)) + b"]\n"


@fuzz(120)
@given(raw=junk | mutated(VALID_YAML) | yaml_docs)
@example(raw=b"[" * 5000)
@example(raw=b"\xff\xfe\x00")
@example(raw=b"1: 2\n")
def test_read_yaml_survives_any_bytes(tmp_path, raw):
    path = tmp_path / "fuzzed.yaml"
    put(path, raw)
    values = outcome(lambda: config.read_yaml(path), path)
    if values is not None:
        assert isinstance(values, dict) and set(values) <= set(config.FIELDS)


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_bytes(YAML_BOMB)
    assert outcome(lambda: config.read_yaml(path), path, seconds=2) is None


@fuzz(100)
@given(raw=mutated(VALID_YAML) | yaml_docs)
@example(raw=b"lr: -1\n")
def test_make_config_from_any_yaml_names_the_file(tmp_path, raw):
    path = tmp_path / "fuzzed.yaml"
    put(path, raw)
    cfg = outcome(lambda: config.make_config({}, path), path)
    assert cfg is None or isinstance(cfg, config.TrainConfig)


# --------------------------------------------------------------------------------------------
# safetensors weights (checkpoint.py): headers that lie.

def tiny_weights() -> bytes:
    model = create_model("resnet20", widths=[2, 4, 8], blocks=[1, 1, 1], num_classes=3)
    buf = io.BytesIO()
    from safetensors.torch import save
    buf.write(save({k: v.contiguous() for k, v in model.state_dict().items()},
                   metadata=checkpoint.model_metadata(model)))
    return buf.getvalue()


VALID_WEIGHTS = tiny_weights()


def split_weights(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join_weights(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
MODEL_ARGS = ['{"widths": [-3]}', '{"widths": [2, 4]}', '{"blocks": [0, 0, 0]}', '{"num_classes": -1}',
              '{"in_chans": -1}', '{"widths": "abc"}', '{"nope": 1}', "[1, 2]", "not json", "5",
              '{"widths": [2, 4, 8], "blocks": [1, 1, 1], "num_classes": 4}', "[" * 100_000,
              '{"widths": [100000, 100000, 100000]}', "1" * 5000]


@st.composite
def lying_weights(draw) -> bytes:
    header, body = split_weights(VALID_WEIGHTS)
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["dtype", "shape", "offsets", "drop", "add", "name", "args", "meta"]))
        name = draw(st.sampled_from(names))
        entry = header.get(name)
        meta = header.setdefault("__metadata__", {})
        if kind == "dtype" and entry:
            entry["dtype"] = draw(st.sampled_from(["F16", "BF16", "F64", "I64", "U8", "BOOL", "X9", "", "F8_E4M3"])
                                  | json_values)
        elif kind == "shape" and entry:
            entry["shape"] = draw(st.lists(st.sampled_from([0, 1, 2, 3, 10**6, 2**40, 2**63, -1]) | st.integers(0, 9),
                                           max_size=5) | json_values)
        elif kind == "offsets" and entry:
            big = st.sampled_from([0, 1, len(body), len(body) + 1, 2**40, 2**64 - 1, -1]) | st.integers(0, len(body))
            entry["data_offsets"] = draw(st.lists(big, min_size=0, max_size=3) | json_values)
        elif kind == "drop":
            header.pop(name, None)
        elif kind == "add":
            header[draw(st.text(max_size=8))] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        elif kind == "name":
            meta["model_name"] = draw(st.sampled_from(["resnet20", "plain20", "resnet50", "nope", ""]) | st.text())
        elif kind == "args":
            meta["model_args"] = draw(st.sampled_from(MODEL_ARGS) | json_values.map(json.dumps))
        else:
            meta[draw(st.text(max_size=6))] = draw(st.text(max_size=6) | json_values)
    raw = join_weights(header, body)
    if draw(st.booleans()):
        raw = draw(mutated(raw, ((0, "<Q"),)))
    return raw


def weights_with(**meta) -> bytes:
    header, body = split_weights(VALID_WEIGHTS)
    header["__metadata__"].update(meta)
    return join_weights(header, body)


@fuzz(150)
@given(raw=junk | lying_weights())
@example(raw=weights_with(model_args="[" * 100_000))
@example(raw=weights_with(model_args="1" * 5000))
def test_read_metadata_survives_lying_headers(tmp_path, raw):
    path = tmp_path / "fuzzed.safetensors"
    put(path, raw)
    meta = outcome(lambda: checkpoint.read_metadata(path), path)
    assert meta is None or isinstance(meta, dict)


@fuzz(60)
@given(raw=lying_weights())
@example(raw=weights_with(model_args='{"widths": [-3]}'))
@example(raw=weights_with(model_args='{"widths": [2, 4, 8], "blocks": [1, 1, 1], "num_classes": 4}'))
@example(raw=weights_with(model_args='{"widths": [100000, 100000, 100000]}'))
@example(raw=weights_with(model_args="[1, 2]"))
@example(raw=weights_with(model_name="5"))
def test_load_survives_lying_headers(tmp_path, raw):
    path = tmp_path / "fuzzed.safetensors"
    put(path, raw)
    model = outcome(lambda: checkpoint.load(path), path, seconds=20)
    if model is not None:
        assert isinstance(model, torch.nn.Module)


@pytest.mark.parametrize("args", ['{"widths": [12000, 12000, 12000]}',  # 5 GB a layer: fits in RAM, is filled
                                  '{"blocks": [100000000, 1, 1]}'])  # 10^8 blocks: hours of building
def test_load_refuses_a_model_far_larger_than_its_file(tmp_path, args):
    path = tmp_path / "big.safetensors"
    path.write_bytes(weights_with(model_args=args))
    assert outcome(lambda: checkpoint.load(path), path, seconds=3) is None


def test_weights_header_claiming_a_huge_length_is_refused(tmp_path):
    path = tmp_path / "huge.safetensors"
    for n in (2**63, 10**12, len(VALID_WEIGHTS)):
        path.write_bytes(struct.pack("<Q", n) + VALID_WEIGHTS[8:])
        assert outcome(lambda: checkpoint.read_metadata(path), path, headroom=256 << 20) is None
    header, body = split_weights(VALID_WEIGHTS)
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [10**6, 10**6]
    path.write_bytes(join_weights(header, body))
    assert outcome(lambda: checkpoint.read_metadata(path), path, headroom=256 << 20) is None


# --------------------------------------------------------------------------------------------
# A run folder: metrics.jsonl (rundir.read_metrics) and what `resnetkit report` reads.

VALID_ROWS = [
    {"epoch": 0.5, "step": 10, "train_loss": 1.2, "train_error": 0.4, "lr": 0.1, "images_per_sec": 900.0},
    {"epoch": 1.0, "step": 20, "train_loss": 0.8, "train_error": 0.3, "lr": 0.1, "images_per_sec": 950.0},
    {"epoch": 1.0, "step": 20, "test_error": 0.25, "test_loss": 0.7, "test_accuracy": 0.75},
]
VALID_METRICS = "".join(json.dumps(r) + "\n" for r in VALID_ROWS).encode()
VALID_SUMMARY = json.dumps({"model": "resnet20", "dataset": "fashion-mnist", "test_accuracy": 0.75,
                            "test_error": 0.25, "test_loss": 0.7, "steps": 20, "epochs": 1.0, "params": 1293,
                            "train_time_sec": 3.5, "images_per_sec": 925.0, "device": "cpu",
                            "precision": "fp32", "torch": torch.__version__}).encode()
VALID_CONFIG = config.to_yaml(config.TrainConfig()).encode()

metric_keys = st.sampled_from(["step", "epoch", "train_error", "test_error", "train_loss", "lr"]) | st.text(max_size=4)
metric_values = (st.integers(-5, 10**6) | st.floats() | st.none() | st.booleans() | st.text(max_size=4)
                 | st.lists(st.integers(), max_size=2))
metric_rows = st.lists(st.dictionaries(metric_keys, metric_values, max_size=6) | json_values, max_size=6).map(
    lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode())
json_files = json_values.map(lambda v: json.dumps(v).encode())


@fuzz(200)
@given(raw=junk | mutated(VALID_METRICS) | metric_rows)
@example(raw=b'{"step": 1}\n' + b"[" * 100_000 + b"\n")
@example(raw=b'{"step": ' + b"1" * 5000 + b"}\n")
@example(raw=b"\xff\xfe{}\n")
def test_read_metrics_survives_any_bytes(tmp_path, raw):
    path = tmp_path / "metrics.jsonl"
    put(path, raw)
    rows = outcome(lambda: rundir.read_metrics(path), path)
    if rows is not None:
        # A torn or malformed line is skipped; what is returned is a row every reader can use.
        assert all(isinstance(r, dict) and type(r["step"]) is int for r in rows)


def run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    for name, raw in (("summary.json", VALID_SUMMARY), ("metrics.jsonl", VALID_METRICS),
                      ("config.yaml", VALID_CONFIG)):
        put(run / name, raw)
    return run


@fuzz(20)
@given(name=st.sampled_from(["metrics.jsonl", "summary.json", "config.yaml"]), seed=st.data())
def test_report_survives_a_corrupt_run_folder(tmp_path, name, seed):
    run = run_folder(tmp_path)
    extra = {"metrics.jsonl": metric_rows, "summary.json": json_files, "config.yaml": yaml_docs}[name]
    put(run / name, seed.draw(junk | mutated((run / name).read_bytes()) | extra))
    page = outcome(lambda: report.build_report(run), run / name, seconds=30)
    assert page is None or page.startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("name,raw", [
    ("summary.json", b"[1, 2]"),
    ("summary.json", b'{"test_accuracy": "high", "test_loss": "low", "epochs": "x", "params": 1e999}'),
    ("summary.json", b"\xff\xfe\xfd"),
    ("summary.json", b"{" * 100_000),
    ("config.yaml", b"[1, 2]"),
    ("config.yaml", b"\xff\xfe\xfd"),
    ("config.yaml", YAML_BOMB),
    # numbers where the figure expects them, but not ones it can draw
    ("metrics.jsonl", b'{"step": 1, "train_error": "x"}\n{"step": 2, "test_error": 1e308}\n'
                      b'{"step": 3, "test_error": [1]}\n{"step": ' + b"9" * 400 + b', "train_error": 0.5}\n'),
], ids=lambda v: v if isinstance(v, str) else None)
def test_report_survives_hostile_files(tmp_path, name, raw):
    run = run_folder(tmp_path)
    put(run / name, raw)
    page = outcome(lambda: report.build_report(run), run / name, seconds=5)
    assert page is None or page.startswith("<!DOCTYPE html>")
