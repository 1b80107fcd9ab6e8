"""Muon for convolution filters (``--optimizer muon``), the way airbench trains its CIFAR-10 nets.

Muon (Jordan et al. 2024) steps each weight matrix along its momentum made orthogonal (all
singular values near 1, by a Newton-Schulz iteration): every direction the gradient spans moves
at the same rate. ``torch.optim.Muon`` does that for 2-D parameters only. A filter bank
``out x in x kh x kw`` is the matrix ``out x (in kh kw)``, and orthogonalising a matrix does not
depend on the order of its columns, so each bank is handed to torch's Muon as a 2-D parameter
that shares its memory (in whichever order the bank is stored: channels_last or not), with its
gradient viewed the same way before each step. No copy of the weights, no Muon of our own.

As in airbench, each bank is rescaled to norm sqrt(out) before its step, in place of weight
decay: a batch norm follows every convolution of these nets, so the scale does not change what
the net computes, and fixing it makes the learning rate the step's size relative to the weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import UserError


def matrix(t: torch.Tensor) -> torch.Tensor:
    """``t`` (out x in x kh x kw) as out x (in kh kw), a view in its memory order where there is one."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)  # NHWC in memory: columns ordered kh, kw, in
    return t.reshape(len(t), -1)


class FilterMuon:
    """``torch.optim.Muon`` over the trainable 4-D weights of ``model``; ``optimizer`` is that
    Muon (for the schedule and the checkpoint), ``step()`` hands it the gradients and steps."""

    def __init__(self, model: nn.Module, lr: float, momentum: float, ns_steps: int = 5) -> None:
        if getattr(model, "preact", False):
            raise UserError("--optimizer muon rescales each filter bank, which needs a batch norm after every "
                            "convolution; a pre-activation net (--version 2) adds some straight to the shortcut")
        self.filters = [p for p in model.parameters() if p.requires_grad and p.ndim == 4]
        if not self.filters:
            raise UserError("--optimizer muon: this net has no trainable convolution filters")
        self.matrices = [nn.Parameter(matrix(w.detach())) for w in self.filters]
        for w, m in zip(self.filters, self.matrices):
            if m.data_ptr() != w.data_ptr():  # reshape copied: no 2-D view of this layout
                raise UserError(f"--optimizer muon cannot view a {tuple(w.shape)} filter bank with strides "
                                f"{w.stride()} as a matrix")
        self.optimizer = torch.optim.Muon(self.matrices, lr=lr, momentum=momentum, nesterov=True, weight_decay=0,
                                         ns_steps=ns_steps)

    @torch.no_grad()
    def step(self) -> None:
        for w, m in zip(self.filters, self.matrices):
            m.grad = None if w.grad is None else matrix(w.grad)
            m.mul_(math.sqrt(len(m)) / m.norm().clamp(min=1e-12))
        self.optimizer.step()
        for m in self.matrices:
            m.grad = None  # the model's own gradients are what zero_grad clears
