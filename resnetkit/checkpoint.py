"""Everything the trainer writes to disk, and loading it back safely.

* ``atomic_write``: temp file in the same folder, fsync, rename, so a crash mid-write
  never leaves a half-written checkpoint in place of a good one.
* ``checkpoint.pt``: full training state for ``--resume``, loaded with ``weights_only=True``
  (no arbitrary unpickling).
* ``model.safetensors``: final weights, with the model name and constructor arguments in
  its metadata so ``load(path)`` rebuilds the model from the file alone.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import reprlib
import secrets
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from .errors import UserError
from .registry import create_model

# Tests of crash safety set this to hold every write half-done for that many seconds.
_PAUSE = float(os.environ.get("RESNETKIT_TEST_WRITE_PAUSE", "0") or 0)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``path`` whole or not at all, with the usual permissions (0666 less the umask;
    ``mkstemp`` would make it private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if _PAUSE:  # test-only: hold the write half done, so a test can kill us right there
                f.write(data[:len(data) // 2])
                f.flush()
                time.sleep(_PAUSE)
                data = data[len(data) // 2:]
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # disk full, quota, I/O error: the previous file is untouched
            kept = "; the previous version is intact" if path.exists() else ""
            raise UserError(f"cannot write {path}: {e.strerror or e}{kept}") from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def save_checkpoint(path: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


class UnsafeFile(UserError):
    """A model file that would run code if unpickled; refused, never opened further."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # PyTorch's message advises loading with weights_only=False: exactly what must not be
        # done with such a file. Say what the file asked for, and nothing else.
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = found.group(1) if found else "something other than tensors"
        raise UnsafeFile(f"refusing to load {path}: it asks to unpickle {what}, which is not model data "
                         "(loading it could run code)") from None
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None


def model_metadata(model: nn.Module, extra: dict | None = None) -> dict[str, str]:
    """What ``load`` needs to rebuild ``model``; safetensors metadata values are strings."""
    args = {k: v for k, v in getattr(model, "model_args", {}).items() if k != "norm_layer"}
    meta = {"model_name": getattr(model, "model_name", ""), "model_args": json.dumps(args)}
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    return meta


def save_weights(path: str | Path, model: nn.Module, extra: dict | None = None) -> None:
    """``model.safetensors`` with rebuild metadata; ``extra`` values are JSON-encoded."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, canonical(save(tensors, metadata=model_metadata(model, extra))))


def canonical(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: the library writes the
    metadata in a random order, so equal weights would not make equal files. Offsets count from
    the end of the header, so only the header changes (padded with spaces to 8 bytes, as the
    format asks)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + blob[8 + n:]


def read_metadata(path: str | Path) -> dict:
    """The JSON-decoded metadata of a weights file written by ``save_weights``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise UserError(f"not a safetensors file: {path} ({e})") from None
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (ValueError, RecursionError):  # not JSON, a 5000-digit number, [[[[...: kept as text
            meta[k] = v
    return meta


def load(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a ``model.safetensors`` written by resnetkit (or a checkpoint.pt)."""
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        ckpt = load_checkpoint(path, map_location)
        if "model_name" not in ckpt:
            raise UserError(f"{path} has no model name: not a resnetkit checkpoint")
        tensors = ckpt.get("model")
        if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise UserError(f"{path} holds no weights")
        model = rebuild(path, ckpt["model_name"], ckpt.get("model_args"),
                        {k: tuple(v.shape) for k, v in tensors.items()})
        model.load_state_dict(tensors)
        return model
    meta = read_metadata(path)
    if not meta.get("model_name"):
        raise UserError(f"{path} has no model_name metadata: not written by resnetkit")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        model = rebuild(path, meta["model_name"], meta.get("model_args", {}), shapes)
        model.load_state_dict(load_file(str(path), device=str(map_location)))
    except (SafetensorError, OSError) as e:
        raise UserError(f"not a valid safetensors file: {path} ({e})") from None
    model.metadata, model.source = meta, str(path)
    return model


def rebuild(path: Path, name, args, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """The network a file's metadata describes, once it is known to fit the tensors the file holds
    (``shapes``), or a clear error. The metadata is the stranger's word: it is checked on a
    parameterless ("meta") copy first, so that arguments asking for a network far larger than the
    file (a 360 GB layer) cost no memory; a block count beyond the file's tensor count, which
    would take hours to build even there, is refused first."""
    if not isinstance(name, str) or not isinstance(args, dict):
        raise UserError(f"{path}: malformed model metadata (model_name {reprlib.repr(name)}, "
                        f"model_args {reprlib.repr(args)})")
    # Each block holds tensors: more blocks than the file has tensors cannot fit.
    listed = args.get("blocks") if isinstance(args.get("blocks"), list) else []
    blocks = sum(b for b in listed if isinstance(b, int) and not isinstance(b, bool))
    if blocks > len(shapes):
        raise UserError(f"{path}: its metadata asks for {blocks:,} blocks, more than the {len(shapes)} "
                        f"tensors the file holds ({name} with {reprlib.repr(args)})")
    try:
        with torch.device("meta"):
            fit(create_model(name, **args), shapes, path)
        return create_model(name, **args)
    except UserError as e:
        raise UserError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from None
    except (TypeError, ValueError, RuntimeError, IndexError, ZeroDivisionError, OverflowError) as e:
        raise UserError(f"{path}: {name} cannot be built with {reprlib.repr(args)}: {str(e)[:200]}") from None


def fit(model: nn.Module, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """Do a file's tensors fit the model? A mismatch named key by key, not PyTorch's page of them."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in own if k not in shapes]
    unexpected = [k for k in shapes if k not in own]
    wrong = [k for k in own if k in shapes and shapes[k] != own[k]]
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape at", wrong)):
        if keys:
            raise UserError(f"weights in {path} do not fit {getattr(model, 'model_name', 'the model')}: "
                            f"{what} {', '.join(keys[:3])}" + (f" and {len(keys) - 3} more" if len(keys) > 3 else ""))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a .safetensors file, a torchvision-style .pth state dict, or our checkpoint."""
    path = Path(path)
    if path.suffix == ".safetensors":
        read_metadata(path)  # validates the file, with a clean error
        return load_file(str(path))
    obj = load_checkpoint(path)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}
