"""The model registry: builders register under their name; ``create_model`` looks them up."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable

from torch import nn

from .errors import UserError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its ``__name__``; names must be unique."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Every registered name matching the shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


class UnknownModelError(UserError, KeyError):
    """A name no builder is registered under: bad input, so a one-line error on the command line."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; keyword arguments go to its builder.

    Raises ``UnknownModelError`` (a ``KeyError``) naming the closest registered names.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `resnetkit list`"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    model = _MODELS[name](**kwargs)
    # Remember how the model was made so a weights file can rebuild it (see checkpoint.py).
    model.model_name = name
    model.model_args = dict(kwargs)
    return model
