"""Architecture diagrams drawn from a real model: SVG, or one HTML page holding both styles.

    resnetkit draw resnet50 -o resnet50.svg                          # every layer, top to bottom
    resnetkit draw resnet50 --style compact -o resnet50-compact.svg  # one box per block, totals
    resnetkit draw resnet20 --shortcut C --direction horizontal -o resnet20.html
    resnetkit draw resnet20 --widths 32 64 128 --blocks 1 1 1 -o resnet8-wide.svg
    resnetkit draw runs/train/model.safetensors -o trained.svg       # the network a file rebuilds

    >>> from resnetkit import create_model, draw
    >>> svg = draw.draw_svg(create_model("resnet20"), style="compact")

This module only lays things out and renders them. What to draw comes from
``architecture.trace``, which runs the model once and returns its stem, stages, blocks and
layers as plain dataclasses; nothing here looks inside a model.

The SVG is built as plain strings. Every label is a real ``<text>`` (searchable, selectable), and
every drawn thing carries classes a script can count: ``<g class="layer conv" data-name=...>``
(plus ``shortcut`` on a projection's layers), ``<g class="block">``, ``<g class="stage">``,
``<g class="add">``, ``<path class="shortcut-arrow identity|projection">``, ``<g class="totals">``.
Fonts have a fixed size and the canvas grows with the network, so ResNet-152 stays readable:
the browser scrolls instead of shrinking it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from torch import nn

from .architecture import Architecture, Block, Layer, trace
from .checkpoint import atomic_write_text, read_metadata
from .config import add_model_args, check_model, flag, model_kwargs, model_kwargs_for_input
from .errors import UserError

STYLES = ("compact", "detailed")
DIRECTIONS = ("vertical", "horizontal")


# --------------------------------------------------------------------------------------------
# Geometry. All sizes in px; fonts never shrink, the canvas grows.

FONT = 12  # box labels
SMALL = 11  # annotations: the smallest text drawn, still readable unscaled
TITLE = 18
CHAR_EM = 0.62  # average glyph advance of DejaVu Sans / Arial in em; SVG text has no metrics here
BOX_H = 26
GAP = 18  # between consecutive boxes along the flow: the visible arrow
SPLIT_GAP = 26  # the gap where a shortcut leaves the main path is wider
R_ADD = 10
LANE = 28  # from the branch's edge to an identity shortcut's lane
CORNER = 10  # radius of the shortcut's bends
PAD = 10  # inside a block's frame
SPAD = 12  # inside a stage's frame
LABEL = 22  # band at the top of a frame for its title
MARGIN = 24
ROW_GAP = 30  # horizontal diagrams: between rows
MAX_ROW = 2400  # horizontal diagrams: a stage wraps onto a new row past this length
LINE_H = 16  # line height inside multi-line boxes

COLORS = {  # fill, stroke
    "conv": ("#dbe8f7", "#3b6ea8"),
    "bn": ("#fbefd3", "#b8860b"),
    "relu": ("#e2f2de", "#4b8b3b"),
    "maxpool": ("#ece3f5", "#76549f"),
    "avgpool": ("#ece3f5", "#76549f"),
    "fc": ("#f8dcdc", "#b03a3a"),
    "droppath": ("#eeeeee", "#777777"),
    "other": ("#eeeeee", "#777777"),
    "io": ("#ffffff", "#555555"),
    "stem": ("#f2f2f2", "#666666"),
}
LINE = "#333333"
SHORTCUT = {  # stroke, dash, width: identity plain grey, option A dashed blue, projection orange
    "identity": ("#555555", None, 1.6),
    "zeropad": ("#1f77b4", "6 4", 1.6),
    "projection": ("#d2691e", None, 2.2),
}
PROJ_FILL = "#fde6d2"
SHORTCUT_TEXT = {
    "identity": "identity shortcut",
    "zeropad": "zero-pad shortcut (A)",
    "projection": "projection shortcut",
    "none": "no shortcut",
}


def _tw(text: str, size: float = FONT, bold: bool = False) -> float:
    """Estimated rendered width of ``text``; generous, so boxes never clip."""
    return len(text) * size * (CHAR_EM + (0.06 if bold else 0.0))


def _n(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _attrs(**kw: object) -> str:
    """Keyword arguments as XML attributes: class_ -> class, font_size -> font-size."""
    out = []
    for k, v in kw.items():
        if v is None:
            continue
        k = k.rstrip("_").replace("_", "-")
        out.append(f" {k}={quoteattr(_n(v) if isinstance(v, float) else str(v))}")
    return "".join(out)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


class _Canvas:
    """SVG parts in flow coordinates: u runs along the data flow, v across it.

    A vertical diagram maps (u, v) to (x=v, y=u), a horizontal one to (x=u, y=v), so a block
    is laid out once for both; text always stays horizontal.
    """

    def __init__(self, vertical: bool, box_w: float) -> None:
        self.vertical = vertical
        self.box_w = box_w  # vertical diagrams: one width for every layer box
        self.parts: list[str] = []

    def xy(self, u: float, v: float) -> tuple[float, float]:
        return (v, u) if self.vertical else (u, v)

    def box_size(self, label: str) -> tuple[float, float]:
        """(length along the flow, width across it) of a one-line box."""
        if self.vertical:
            return BOX_H, self.box_w
        return max(_tw(label) + 16, 44), BOX_H

    def open(self, cls: str, **attrs: object) -> None:
        self.parts.append(f"<g{_attrs(class_=cls, **attrs)}>")

    def close(self) -> None:
        self.parts.append("</g>")

    def title(self, text: str) -> None:
        self.parts.append(f"<title>{escape(text)}</title>")

    def rect(self, u0: float, u1: float, v0: float, v1: float, **attrs: object) -> None:
        (x0, y0), (x1, y1) = self.xy(u0, v0), self.xy(u1, v1)
        self.parts.append(f"<rect{_attrs(x=float(min(x0, x1)), y=float(min(y0, y1)), width=float(abs(x1 - x0)), height=float(abs(y1 - y0)), **attrs)}/>")  # noqa: E501

    def text(self, x: float, y: float, text: str, size: int = FONT, **attrs: object) -> None:
        """Text at screen position (x, y): the baseline's start, or its middle with text_anchor."""
        self.parts.append(f"<text{_attrs(x=float(x), y=float(y), font_size=size, **attrs)}>{escape(text)}</text>")

    def path(self, cmds: list[tuple], **attrs: object) -> None:
        """cmds: ("M", (u, v)), ("L", (u, v)), ("Q", (u, v), (u, v)) in flow coordinates."""
        d = " ".join(c[0] + " " + " ".join(f"{_n(x)},{_n(y)}" for x, y in (self.xy(*p) for p in c[1:]))
                     for c in cmds)
        self.parts.append(f"<path{_attrs(d=d, fill='none', **attrs)}/>")

    def arrowhead(self, u: float, v: float, du: float, dv: float, color: str = LINE) -> None:
        """A filled arrowhead with its tip at (u, v), pointing along the unit vector (du, dv)."""
        pts = [(u, v), (u - 8 * du - 4 * dv, v - 8 * dv + 4 * du), (u - 8 * du + 4 * dv, v - 8 * dv - 4 * du)]
        xy = " ".join(f"{_n(x)},{_n(y)}" for x, y in (self.xy(*p) for p in pts))
        self.parts.append(f"<polygon{_attrs(class_='arrowhead', points=xy, fill=color)}/>")

    def arrow(self, u0: float, u1: float, v: float, head: bool = True) -> None:
        """The main path between two things on the centre line v, along the flow."""
        self.path([("M", (u0, v)), ("L", (u1 - (4 if head else 0), v))], class_="flow", stroke=LINE,
                  stroke_width=1.4)
        if head:
            self.arrowhead(u1, v, 1, 0)

    def side_text(self, u_mid: float, v_edge: float, text: str, color: str = "#555555") -> None:
        """A note beside something, on its +v side (right of it, or under it)."""
        if self.vertical:
            self.text(v_edge + 6, u_mid + SMALL * 0.35, text, SMALL, fill=color)
        else:
            self.text(u_mid, v_edge + 4 + SMALL * 0.8, text, SMALL, fill=color, text_anchor="middle")

    def side_extent(self, text: str) -> float:
        return 6 + _tw(text, SMALL) if self.vertical else 6 + SMALL

    def layer_box(self, layer: Layer, u: float, v: float, main: float, cross: float,
                  shortcut: bool = False) -> None:
        kind = layer.kind
        cls = f"layer pool {kind}" if kind in ("maxpool", "avgpool") else f"layer {kind}"
        if shortcut:
            fill, stroke = PROJ_FILL, SHORTCUT["projection"][0]
            cls += " shortcut"
        else:
            fill, stroke = COLORS[kind]
        self.open(cls, data_name=layer.name, data_shape=_shape(layer.shape))
        self.title(f"{layer.name}: {layer.label} → {_shape(layer.shape)}")
        self.rect(u, u + main, v - cross / 2, v + cross / 2, rx=4, fill=fill, stroke=stroke,
                  stroke_width=1.6 if shortcut else 1.2)
        x, y = self.xy(u + main / 2, v)
        self.text(x, y + FONT * 0.35, layer.label, FONT, text_anchor="middle", fill="#111111")
        self.close()

    def add_node(self, u: float, v: float) -> None:
        x, y = self.xy(u, v)
        self.open("add")
        self.title("addition: branch + shortcut")
        self.parts.append(f"<circle{_attrs(cx=float(x), cy=float(y), r=R_ADD, fill='#ffffff', stroke=LINE, stroke_width=1.4)}/>")  # noqa: E501
        d = f"M {_n(x - 6)},{_n(y)} H {_n(x + 6)} M {_n(x)},{_n(y - 6)} V {_n(y + 6)}"
        self.parts.append(f"<path{_attrs(d=d, stroke=LINE, stroke_width=1.6)}/>")
        self.close()


# --------------------------------------------------------------------------------------------
# Things laid out along the flow. Each knows its length along it (main), how far it reaches
# to either side of the centre line (before: -v, after: +v), and whether the arrow coming in
# should end in an arrowhead (blocks draw their own, into their first box).


class _LayerItem:
    head = True

    def __init__(self, c: _Canvas, layer: Layer, note: str | None = None) -> None:
        self.layer, self.note = layer, note
        self.main, self.cross = c.box_size(layer.label)
        if note and not c.vertical:
            self.main = max(self.main, _tw(note, SMALL) + 8)
        self.before = self.after = self.cross / 2
        if note:
            self.after += c.side_extent(note)

    def draw(self, c: _Canvas, u: float, v: float) -> None:
        c.layer_box(self.layer, u, v, self.main, self.cross)
        if self.note:
            c.side_text(u + self.main / 2, v + self.cross / 2, self.note)


class _TextBox:
    """A box of one or more centred lines: the input, and everything in the compact style."""

    head = True

    def __init__(self, c: _Canvas, lines: list[str], cls: str, width: float, fill: str, stroke: str,
                 dash: str | None = None, stroke_width: float = 1.2, **data: object) -> None:
        self.lines, self.cls, self.data = lines, cls, data
        self.fill, self.stroke, self.dash, self.stroke_width = fill, stroke, dash, stroke_width
        height = len(lines) * LINE_H + 10
        self.main, self.cross = (height, width) if c.vertical else (width, height)
        self.before = self.after = self.cross / 2

    def draw(self, c: _Canvas, u: float, v: float) -> None:
        c.open(self.cls, **self.data)
        c.title(" / ".join(self.lines))
        c.rect(u, u + self.main, v - self.cross / 2, v + self.cross / 2, rx=5, fill=self.fill,
               stroke=self.stroke, stroke_width=self.stroke_width, stroke_dasharray=self.dash)
        x, y = c.xy(u + self.main / 2, v)
        top = y - len(self.lines) * LINE_H / 2
        for i, line in enumerate(self.lines):
            first = i == 0
            c.text(x, top + (i + 0.5) * LINE_H + (FONT if first else SMALL) * 0.35, line,
                   FONT if first else SMALL, text_anchor="middle",
                   font_weight="bold" if first else None, fill="#111111" if first else "#444444")
        c.close()


class _BlockItem:
    """One residual block, every layer drawn, its shortcut routed around the branch."""

    head = False

    def __init__(self, c: _Canvas, block: Block) -> None:
        self.block = b = block
        self.title = f"{b.name} · {b.type} · {_shape(b.shape)}"
        sizes = [c.box_size(x.label) for x in b.branch]
        self.after_sizes = [c.box_size(x.label) for x in b.after_add]
        self.proj_sizes = [c.box_size(x.label) for x in b.projection]
        half = max(cr for _, cr in sizes + self.after_sizes) / 2
        residual = b.shortcut != "none"
        split = min(b.split, len(sizes))

        u = (LABEL if c.vertical else 0) + PAD
        self.pos: list[float] = []  # where each branch box starts along the flow
        self.u_split = u + SPLIT_GAP / 2
        for i, (m, _) in enumerate(sizes):
            gap = SPLIT_GAP if (residual and i == split) else GAP
            if i == split:
                self.u_split = u + gap / 2
            u += gap
            self.pos.append(u)
            u += m
        self.sizes = sizes
        if residual:
            gap = SPLIT_GAP if split == len(sizes) else GAP
            if split == len(sizes):
                self.u_split = u + gap / 2
            # The projection's boxes sit between the bends of its lane: make room if needed.
            stack = sum(m for m, _ in self.proj_sizes) + GAP * max(len(self.proj_sizes) - 1, 0)
            need = stack + 2 * (CORNER + 12) if self.proj_sizes else 2 * CORNER + 8
            gap = max(gap, need - (u - self.u_split))
            u += gap
            self.u_add = u + R_ADD
            u += 2 * R_ADD
        self.after_pos = []
        for m, _ in self.after_sizes:
            u += GAP
            self.after_pos.append(u)
            u += m
        u += PAD
        self.half = half

        outer = half
        if b.shortcut in ("identity", "zeropad"):
            self.lane = half + LANE
            outer = self.lane + c.side_extent(self._lane_note())
        elif b.shortcut == "projection":
            pc = max(cr for _, cr in self.proj_sizes) if self.proj_sizes else 0
            self.lane = half + LANE + pc / 2
            outer = self.lane + pc / 2
        self.before = half + PAD + (0 if c.vertical else LABEL)
        self.after = outer + PAD
        if c.vertical:  # the title sits right of the centre line
            self.after = max(self.after, 8 + _tw(self.title, FONT, True) + PAD)
        else:
            u = max(u, _tw(self.title, FONT, True) + 2 * PAD)
        self.main = u

    def _lane_note(self) -> str:
        b = self.block
        if b.shortcut != "zeropad":
            return "identity" if b.shortcut == "identity" else ""
        extra = b.shape[0] - b.in_shape[0]  # what option A pads, read off the traced shapes
        stride = b.in_shape[-1] // b.shape[-1] if len(b.shape) == 3 else 1
        return "zero-pad" + (f" +{extra} ch" if extra else "") + (f", /{stride}" if stride > 1 else "")

    def draw(self, c: _Canvas, u0: float, v: float) -> None:
        b = self.block
        c.open("block", data_name=b.name, data_type=b.type, data_shape=_shape(b.shape),
               data_shortcut=b.shortcut)
        c.rect(u0, u0 + self.main, v - self.before, v + self.after, class_="block-frame", rx=6,
               fill="#fafafa", stroke="#b5b5b5")
        if c.vertical:
            x, y = c.xy(u0, v)
            c.text(x + 8, y + 16, self.title, FONT, font_weight="bold", fill="#333333")
        else:
            x, y = c.xy(u0, v - self.before)
            c.text(x + PAD, y + 16, self.title, FONT, font_weight="bold", fill="#333333")

        if b.shortcut != "none":
            self._draw_shortcut(c, u0, v)

        # The main path: into the frame, box to box, through the addition, out of the frame.
        spans = [(u0 + p, u0 + p + m) for p, (m, _) in zip(self.pos, self.sizes)]
        if b.shortcut != "none":
            spans.append((u0 + self.u_add - R_ADD, u0 + self.u_add + R_ADD))
        spans += [(u0 + p, u0 + p + m) for p, (m, _) in zip(self.after_pos, self.after_sizes)]
        prev = u0
        for start, end in spans:
            c.arrow(prev, start, v)
            prev = end
        c.arrow(prev, u0 + self.main, v, head=False)

        for layer, p, (m, cr) in zip(b.branch, self.pos, self.sizes):
            c.layer_box(layer, u0 + p, v, m, cr)
        if b.shortcut != "none":
            c.add_node(u0 + self.u_add, v)
        for layer, p, (m, cr) in zip(b.after_add, self.after_pos, self.after_sizes):
            c.layer_box(layer, u0 + p, v, m, cr)
        c.close()

    def _draw_shortcut(self, c: _Canvas, u0: float, v: float) -> None:
        b = self.block
        color, dash, width = SHORTCUT[b.shortcut]
        us, ua, lane = u0 + self.u_split, u0 + self.u_add, v + self.lane
        # Out of the main path sideways, along a lane beside the branch, into the add node's side.
        cmds = [("M", (us, v)), ("L", (us, lane - CORNER)), ("Q", (us, lane), (us + CORNER, lane)),
                ("L", (ua - CORNER, lane)), ("Q", (ua, lane), (ua, lane - CORNER)),
                ("L", (ua, v + R_ADD + 5))]
        kind = "identity zeropad" if b.shortcut == "zeropad" else b.shortcut
        c.path(cmds, class_=f"shortcut-arrow {kind}", stroke=color, stroke_width=width,
               stroke_dasharray=dash, data_block=b.name)
        c.arrowhead(ua, v + R_ADD, 0, -1, color)
        x, y = c.xy(us, v)
        c.parts.append(f"<circle{_attrs(cx=float(x), cy=float(y), r=3.5, fill=color)}/>")
        if b.shortcut == "projection":
            stack = sum(m for m, _ in self.proj_sizes) + GAP * (len(self.proj_sizes) - 1)
            p = (us + ua) / 2 - stack / 2
            for layer, (m, cr) in zip(b.projection, self.proj_sizes):
                c.arrowhead(p, lane, 1, 0, color)
                c.layer_box(layer, p, lane, m, cr, shortcut=True)
                p += m + GAP
        else:
            c.side_text((us + ua) / 2, lane, self._lane_note(), color)


# --------------------------------------------------------------------------------------------
# Layout: stages framed, everything in one column (vertical) or one row per stage (horizontal).


@dataclass
class _Segment:
    items: list
    label: str | None = None  # framed stage when set
    name: str | None = None


def _span(items: list) -> float:
    return sum(i.main for i in items) + GAP * (len(items) - 1)


def _layout_vertical(c: _Canvas, segs: list[_Segment], top: float) -> tuple[float, float]:
    minus = max(max(i.before for i in s.items) + (SPAD if s.label else 0) for s in segs)
    plus = max(max(i.after for i in s.items) + (SPAD if s.label else 0) for s in segs)
    plus = max([plus] + [8 + _tw(s.label, 13, True) + SPAD for s in segs if s.label])
    v = MARGIN + minus  # the centre line's x
    u, prev = top, None
    for s in segs:
        if s.label:
            end = u + LABEL + SPAD + _span(s.items) + SPAD
            c.open("stage", data_name=s.name)
            c.rect(u, end, v - minus, v + plus, class_="stage-frame", rx=8, fill="#f3f6f9",
                   stroke="#8a9bb0", stroke_width=1.2)
            c.text(v + 8, u + 16, s.label, 13, font_weight="bold", fill="#2b3a4d")
            u += LABEL + SPAD
        for item in s.items:
            if prev is not None:
                c.arrow(prev, u, v, head=item.head)
            item.draw(c, u, v)
            u += item.main
            prev = u
            u += GAP
        if s.label:
            c.close()
            u = end + GAP
    return v + plus + MARGIN, u - GAP + MARGIN


def _layout_horizontal(c: _Canvas, segs: list[_Segment], top: float) -> tuple[float, float]:
    rows: list[_Segment] = []
    for s in segs:
        if not s.label:
            rows.append(s)
            continue
        chunk: list = []
        for item in s.items:
            if chunk and _span(chunk) + GAP + item.main > MAX_ROW:
                rows.append(_Segment(chunk, s.label, s.name))
                chunk = []
            chunk.append(item)
        rows.append(_Segment(chunk, s.label, s.name))
    for i in range(1, len(rows)):  # every chunk after a stage's first says it continues
        if rows[i].label and rows[i].name == rows[i - 1].name and "(continued)" not in rows[i].label:
            rows[i].label += " (continued)"

    left = MARGIN + 16  # the leftmost 16 px carry the connector that wraps one row to the next
    y, width, prev = top, 0.0, None
    for row in rows:
        framed = row.label is not None
        before = max(i.before for i in row.items) + (SPAD + LABEL if framed else 0)
        after = max(i.after for i in row.items) + (SPAD if framed else 0)
        v = y + before
        u = left + (SPAD if framed else 0)
        right = u + _span(row.items) + (SPAD if framed else 0)
        if framed:
            c.open("stage", data_name=row.name)
            c.rect(left, right, y, v + after, class_="stage-frame", rx=8, fill="#f3f6f9",
                   stroke="#8a9bb0", stroke_width=1.2)
            c.text(left + 8, y + 16, row.label, 13, font_weight="bold", fill="#2b3a4d")
        if prev is not None:
            p_end, p_v, p_bottom, p_right = prev
            xr, ym = p_right + 10, (p_bottom + y) / 2
            head = row.items[0].head
            c.path([("M", (p_end, p_v)), ("L", (xr, p_v)), ("L", (xr, ym)), ("L", (MARGIN + 4, ym)),
                    ("L", (MARGIN + 4, v)), ("L", (u - (4 if head else 0), v))], class_="flow wrap",
                   stroke=LINE, stroke_width=1.4)
            if head:
                c.arrowhead(u, v, 1, 0)
        for k, item in enumerate(row.items):
            if k:
                c.arrow(u - GAP, u, v, head=item.head)
            item.draw(c, u, v)
            u += item.main + GAP
        if framed:
            c.close()
        prev = (u - GAP, v, v + after, right)
        width = max(width, right + 10 + MARGIN)
        y = v + after + ROW_GAP
    return width, y - ROW_GAP + MARGIN


# --------------------------------------------------------------------------------------------
# The two styles.


def _wrap(parts: list[str], width: int = 32) -> list[str]:
    """Join ``parts`` with " · " into lines of about ``width`` characters."""
    lines: list[str] = []
    for p in parts:
        if lines and len(lines[-1]) + 3 + len(p) <= width:
            lines[-1] += " · " + p
        else:
            lines.append(p)
    return lines


def _compact_segments(c: _Canvas, arch: Architecture) -> list[_Segment]:
    out = arch.totals.output_shape[1:]
    texts = {
        "input": [f"input {_shape(arch.input_size)}"],
        "stem": [f"stem → {_shape(arch.stem[-1].shape)}", *_wrap([x.label for x in arch.stem])],
        "head": [f"head → {_shape(out)}", *_wrap([x.label for x in arch.head])],
    }
    blocks = [b for s in arch.stages for b in s.blocks]
    block_lines = {b.name: [f"{b.type} {_shape(b.shape)}", f"{b.name} · {SHORTCUT_TEXT[b.shortcut]}"]
                   for b in blocks}
    every = [line for ls in [*texts.values(), *block_lines.values()] for line in ls]
    width = max(200, max(_tw(x, FONT, True) for x in every) + 24)
    io_fill, io_stroke = COLORS["io"]
    st_fill, st_stroke = COLORS["stem"]
    segs = [_Segment([_TextBox(c, texts["input"], "io input", width, io_fill, io_stroke),
                      _TextBox(c, texts["stem"], "stem", width, st_fill, st_stroke)])]
    for s in arch.stages:
        items = []
        for b in s.blocks:
            stroke, dash, sw = SHORTCUT.get(b.shortcut, ("#999999", None, 1.2))
            fill = PROJ_FILL if b.shortcut == "projection" else "#ffffff"
            items.append(_TextBox(c, block_lines[b.name], "block", width, fill, stroke, dash, sw,
                                  data_name=b.name, data_type=b.type, data_shape=_shape(b.shape),
                                  data_shortcut=b.shortcut))
        kinds = sorted({b.type for b in s.blocks})
        segs.append(_Segment(items, f"{s.name} · {len(s.blocks)} x {', '.join(kinds)}", s.name))
    segs.append(_Segment([_TextBox(c, texts["head"], "head", width, st_fill, st_stroke)]))
    return segs


def _detailed_segments(c: _Canvas, arch: Architecture) -> list[_Segment]:
    text = f"input {_shape(arch.input_size)}"
    width = c.box_w if c.vertical else _tw(text, FONT, True) + 20
    first = _TextBox(c, [text], "io input", width, *COLORS["io"])
    segs = [_Segment([first, *_noted(c, arch.stem, arch.input_size)])]
    for s in arch.stages:
        b = s.blocks
        if not b:
            continue
        label = f"{s.name} · {len(b)} block{'s' if len(b) != 1 else ''} · {_shape(b[-1].shape)}"
        segs.append(_Segment([_BlockItem(c, x) for x in b], label, s.name))
    blocks = [i for s in segs for i in s.items if isinstance(i, _BlockItem)]
    for side in ("before", "after"):  # one frame width for every block: the stages line up
        widest = max((getattr(i, side) for i in blocks), default=0)
        for i in blocks:
            setattr(i, side, widest)
    last = blocks[-1].block.shape if blocks else arch.input_size
    segs.append(_Segment(_noted(c, arch.head, last)))
    return [s for s in segs if s.items]


def _noted(c: _Canvas, layers: list[Layer], shape_in: tuple[int, ...]) -> list[_LayerItem]:
    """Layer boxes, each annotated with its output shape where that shape changes."""
    items, shape = [], shape_in
    for x in layers:
        items.append(_LayerItem(c, x, _shape(x.shape) if x.shape != shape else None))
        shape = x.shape
    return items


def _legend_entries(arch: Architecture, style: str) -> list[tuple]:
    blocks = [b for s in arch.stages for b in s.blocks]
    kinds = {b.shortcut for b in blocks}
    if style == "compact":
        entries: list[tuple] = [("box", *COLORS["stem"], None, "stem / head: the layers around the stages")]
        for k, text in [("identity", "block with an identity shortcut"),
                        ("zeropad", "identity shortcut, zero-padded (option A)"),
                        ("projection", "projection shortcut: 1x1 conv (+ BN)"),
                        ("none", "plain block: no shortcut")]:
            if k in kinds:
                stroke, dash, _ = SHORTCUT.get(k, ("#999999", None, 1.2))
                entries.append(("box", PROJ_FILL if k == "projection" else "#ffffff", stroke, dash, text))
        return entries
    layers = {x.kind for x in arch.stem + arch.head}
    layers |= {x.kind for b in blocks for x in b.branch + b.after_add}
    names = [("conv", "convolution: kernel, channels, /stride"), ("bn", "batch normalisation"),
             ("relu", "ReLU"), ("maxpool", "max pooling"), ("avgpool", "average pooling"),
             ("fc", "fully connected classifier"), ("droppath", "stochastic depth")]
    entries = [("box", *COLORS[k], None, text) for k, text in names if k in layers]
    if kinds - {"none"}:
        entries.append(("add", "addition: branch + shortcut"))
    for k, text in [("identity", "identity shortcut"),
                    ("zeropad", "identity, zero-padded channels (A)"),
                    ("projection", "projection shortcut: 1x1 conv (+ BN)")]:
        if k in kinds:
            entries.append(("line", k, text))
    if "none" in kinds:
        entries.append(("text", "no shortcuts: a plain network"))
    return entries


def _header(arch: Architecture, style: str, ncols: int) -> tuple[list[str], float, float]:
    """Title, totals panel and legend, in screen coordinates: (parts, width, height)."""
    c = _Canvas(False, 0)
    t = arch.totals
    nblocks = sum(len(s.blocks) for s in arch.stages)
    c.text(MARGIN, MARGIN + TITLE, arch.name, TITLE, font_weight="bold", fill="#111111")
    sub = (f"{style} view · input {_shape(arch.input_size)} → output {_shape(t.output_shape[1:])} · "
           f"{nblocks} blocks in {len(arch.stages)} stages")
    c.text(MARGIN, MARGIN + TITLE + 20, sub, FONT, fill="#444444")
    y = MARGIN + TITLE + 34
    lines = [f"weighted layers: {t.weighted_layers} (convs + fc on the main path)",
             f"parameters: {t.params:,}",
             f"MACs: {t.macs:,} ({t.macs / 1e9:.2f} G) at {_shape(arch.input_size)}"]
    panel_w = max(_tw(x) for x in lines) + 24
    c.open("totals")
    c.parts.append(f"<rect{_attrs(x=MARGIN, y=y, width=panel_w, height=len(lines) * LINE_H + 12, rx=5, fill='#f7f7f7', stroke='#999999')}/>")  # noqa: E501
    for i, line in enumerate(lines):
        c.text(MARGIN + 12, y + 6 + (i + 0.75) * LINE_H, line, FONT, fill="#222222")
    c.close()
    y += len(lines) * LINE_H + 12 + 14

    entries = _legend_entries(arch, style)
    col_w = max(_tw(e[-1], SMALL) for e in entries) + 60
    c.open("legend")
    for i, e in enumerate(entries):
        x = MARGIN + (i % ncols) * col_w
        yy = y + (i // ncols) * 24
        if e[0] == "box":
            c.parts.append(f"<rect{_attrs(x=x, y=yy, width=40, height=16, rx=3, fill=e[1], stroke=e[2], stroke_width=1.4, stroke_dasharray=e[3])}/>")  # noqa: E501
        elif e[0] == "add":
            c.parts.append(f"<circle{_attrs(cx=x + 20, cy=yy + 8, r=8, fill='#ffffff', stroke=LINE)}/>")
            c.parts.append(f"<path{_attrs(d=f'M {x + 15},{yy + 8} H {x + 25} M {x + 20},{yy + 3} V {yy + 13}', stroke=LINE)}/>")  # noqa: E501
        elif e[0] == "line":
            color, dash, width = SHORTCUT[e[1]]
            c.parts.append(f"<path{_attrs(d=f'M {x},{yy + 8} H {x + 34}', stroke=color, stroke_width=width, stroke_dasharray=dash, fill='none')}/>")  # noqa: E501
            c.parts.append(f"<polygon{_attrs(points=f'{x + 40},{yy + 8} {x + 32},{yy + 4} {x + 32},{yy + 12}', fill=color)}/>")  # noqa: E501
            if e[1] == "projection":
                c.parts.append(f"<rect{_attrs(x=x + 10, y=yy + 3, width=12, height=10, fill=PROJ_FILL, stroke=color)}/>")  # noqa: E501
        c.text(x + 50, yy + 12, e[-1], SMALL, fill="#333333")
    c.close()
    rows = (len(entries) + ncols - 1) // ncols
    height = y + rows * 24 + 10
    width = max(MARGIN + ncols * col_w, MARGIN + panel_w, MARGIN + _tw(sub)) + MARGIN
    return c.parts, width, height


def _render(arch: Architecture, style: str, direction: str) -> str:
    if style not in STYLES:
        raise UserError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if direction not in DIRECTIONS:
        raise UserError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    vertical = direction == "vertical"
    every = arch.stem + arch.head
    every += [x for s in arch.stages for b in s.blocks for x in b.branch + b.after_add + b.projection]
    box_w = max([140.0] + [_tw(x.label) + 20 for x in every])  # one width for every layer box
    c = _Canvas(vertical, box_w)
    header, head_w, head_h = _header(arch, style, 2 if vertical else 3)
    segs = _compact_segments(c, arch) if style == "compact" else _detailed_segments(c, arch)
    if vertical:
        width, height = _layout_vertical(c, segs, head_h + 10)
    else:
        width, height = _layout_horizontal(c, segs, head_h + 10)
    width = max(width, head_w)
    w, h = _n(width), _n(height)
    root = _attrs(xmlns="http://www.w3.org/2000/svg", width=w, height=h, viewBox=f"0 0 {w} {h}",
                  class_=f"resnetkit-diagram {style} {direction}", data_model=arch.name,
                  font_family="DejaVu Sans, Arial, Helvetica, sans-serif")
    return "\n".join([
        f"<svg{root}>",
        f"<title>{escape(arch.name)}: {style} architecture diagram (resnetkit)</title>",
        f"<rect{_attrs(x=0, y=0, width=w, height=h, fill='#ffffff')}/>",
        *header, *c.parts, "</svg>", "",
    ])


# --------------------------------------------------------------------------------------------
# Public API.


def draw_svg(model: nn.Module, style: str = "detailed", direction: str = "vertical",
             input_size: Sequence[int] | None = None) -> str:
    """The model's architecture as one SVG document (a string).

    ``style`` "detailed" draws every layer and every shortcut; "compact" one box per block,
    grouped by stage, with totals. ``input_size`` is (C, H, W), default the model's own.
    """
    if style not in STYLES:
        raise UserError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    return _render(trace(model, input_size), style, direction)


_PAGE_CSS = """
body { margin: 0; font-family: DejaVu Sans, Arial, Helvetica, sans-serif; background: #ffffff; }
header { position: sticky; top: 0; z-index: 1; display: flex; gap: 12px; align-items: center;
         padding: 10px 24px; background: #f3f6f9; border-bottom: 1px solid #8a9bb0; }
header h1 { font-size: 18px; margin: 0 12px 0 0; }
button { font: inherit; padding: 5px 14px; border: 1px solid #3b6ea8; border-radius: 4px;
         background: #ffffff; color: #3b6ea8; cursor: pointer; }
button[aria-pressed="true"] { background: #3b6ea8; color: #ffffff; }
.diagram { overflow: auto; }
.diagram svg { display: block; }
"""

_PAGE_JS = """
function show(which) {
  for (const name of ["compact", "detailed"]) {
    document.getElementById("diagram-" + name).style.display = name === which ? "" : "none";
    document.getElementById("show-" + name).setAttribute("aria-pressed", String(name === which));
  }
}
document.getElementById("show-compact").addEventListener("click", function () { show("compact"); });
document.getElementById("show-detailed").addEventListener("click", function () { show("detailed"); });
if (location.hash === "#compact" || location.hash === "#detailed") { show(location.hash.slice(1)); }
"""


def draw_html(model: nn.Module, style: str = "compact", direction: str = "vertical",
              input_size: Sequence[int] | None = None) -> str:
    """One self-contained page with both diagrams and buttons to switch; ``style`` shows first.

    No external resources: the SVGs, the CSS and the script are inline, so the file works offline.
    """
    if style not in STYLES:
        raise UserError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    arch = trace(model, input_size)
    svgs = {s: _render(arch, s, direction) for s in STYLES}
    body = []
    for s in STYLES:
        hidden = "" if s == style else ' style="display:none"'
        body.append(f'<div id="diagram-{s}" class="diagram"{hidden}>\n{svgs[s]}</div>')
    buttons = "".join(
        f'<button id="show-{s}" type="button" aria-pressed="{str(s == style).lower()}">{s.title()}</button>'
        for s in STYLES
    )
    name = escape(arch.name)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{name} architecture</title>",
        f"<style>{_PAGE_CSS}</style>",
        "</head>",
        "<body>",
        f"<header><h1>{name} architecture</h1>{buttons}</header>",
        *body,
        f"<script>{_PAGE_JS}</script>",
        "</body>",
        "</html>",
        "",
    ])


def save(model: nn.Module, path: str | os.PathLike, style: str | None = None,
         direction: str = "vertical", input_size: Sequence[int] | None = None) -> Path:
    """Write ``path`` (.svg: one style, default detailed; .html: both, ``style`` shown first).

    The file appears whole or not at all, with the usual permissions (``atomic_write_text``).
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".svg", ".html", ".htm"):
        raise UserError(f"cannot write {path.name!r}: the output must end in .svg or .html")
    if ext == ".svg":
        text = draw_svg(model, style or "detailed", direction, input_size)
    else:
        text = draw_html(model, style or "compact", direction, input_size)
    atomic_write_text(path, text)
    return path


# --------------------------------------------------------------------------------------------
# Command line: `resnetkit draw`.


def _model_from_weights(path: Path, kwargs: dict) -> nn.Module:
    """The network a ``save_weights`` file rebuilds, from its metadata alone (no weights read)."""
    if kwargs:  # the file says how its network was built; a flag that changes it draws another one
        flags = ", ".join(flag(k) for k in kwargs)
        raise UserError(f"{flags}: model options cannot be combined with a weights file ({path.name})")
    meta = read_metadata(path)
    if not meta.get("model_name"):
        raise UserError(f"{path} has no model_name metadata: not written by resnetkit")
    return check_model(meta["model_name"], meta.get("model_args") or {})


def cmd_draw(args: argparse.Namespace) -> None:
    # Only the structure and the shapes are needed: check_model builds on the meta device,
    # allocates nothing, and turns impossible arguments (3 widths for 4 stages) into one line.
    if args.model.endswith(".safetensors"):  # no registered name does: a missing file says so
        model = _model_from_weights(Path(args.model), model_kwargs(vars(args)))
    else:
        model = check_model(args.model, model_kwargs_for_input(args))
    path = save(model, args.output, args.style, args.direction, args.input_size)
    print(f"wrote {path}")


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Register `resnetkit draw` on the command line's subparsers."""
    p = sub.add_parser("draw", help="architecture diagram of a model (SVG, or HTML with both styles)",
                       description="Draw a model's architecture from the model itself.")
    p.add_argument("model", help="registered model name (`resnetkit list`), or a model.safetensors "
                                 "written by resnetkit: its network, rebuilt from the file's metadata")
    p.add_argument("--style", choices=STYLES, default=None,
                   help="detailed: every layer and shortcut; compact: one box per block "
                        "(default: detailed for .svg; for .html the one shown first, compact)")
    p.add_argument("--direction", choices=DIRECTIONS, default="vertical",
                   help="vertical: top to bottom; horizontal: left to right, one row per stage")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="FILE.svg, or FILE.html for one page with both styles and a toggle")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="default: 3 224 224 for ImageNet nets, 3 32 32 for CIFAR nets")
    add_model_args(p)
    p.set_defaults(func=cmd_draw)
