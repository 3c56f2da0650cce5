"""Pictures: detections drawn on images (detection on files, evaluation), precision-recall curves
and picture grids (evaluation), saved as PNG."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

# tab10: distinct, readable on photographs and on the synthetic backgrounds alike.
_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
_GT_COLOUR = (255, 255, 255)


def class_colour(label: int) -> tuple:
    """The RGB colour pictures use for a label."""
    return _PALETTE[int(label) % len(_PALETTE)]


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    gt_boxes: np.ndarray | None = None,
    gt_labels: np.ndarray | None = None,
    score_threshold: float = 0.0,
    min_side: int = 384,
    path: str | None = None,
) -> Image.Image:
    """Draws predicted boxes (class colour, "name score") and ground truth (white, dashed).

    Args:
      image: [H, W, 3] uint8 RGB (`jaxdet.data.denormalize` turns batch images back).
      boxes: [D, 4] xyxy in the image's pixels; labels: [D] int; scores: [D].
      class_names: label k's name.
      gt_boxes: [G, 4] xyxy, optional; gt_labels: [G] int, optional (names the gt boxes).
      score_threshold: predictions scoring below are not drawn.
      min_side: small images are enlarged (nearest neighbour) so the shorter side is at least
        this many pixels, or labels would cover the objects.
      path: if given, the picture is saved there as PNG (folders created).
    Returns:
      the picture (PIL image).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(
            f"boxes, labels, scores have {len(boxes)}, {len(labels)}, {len(scores)} entries"
        )
    zoom = max(1, int(np.ceil(min_side / min(image.shape[:2]))))
    picture = Image.fromarray(image)
    if zoom > 1:
        picture = picture.resize((image.shape[1] * zoom, image.shape[0] * zoom), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, picture.height // 40))
    width = max(2, picture.height // 200)

    if gt_boxes is not None:
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        for g, box in enumerate(gt_boxes * zoom):
            _dashed_rectangle(draw, box, _GT_COLOUR, width)
            if gt_labels is not None:
                name = class_names[int(np.asarray(gt_labels).reshape(-1)[g])]
                _caption(draw, (box[0], box[3]), f"gt: {name}", _GT_COLOUR, font, below=True)
    for i in np.argsort(scores, kind="stable"):  # best drawn last, on top
        if scores[i] < score_threshold:
            continue
        colour = class_colour(labels[i])
        box = boxes[i] * zoom
        draw.rectangle(box.tolist(), outline=colour, width=width)
        _caption(draw, (box[0], box[1]), f"{class_names[int(labels[i])]} {scores[i]:.2f}",
                 colour, font, below=False)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        picture.save(path, format="PNG")
    return picture


def _caption(draw, anchor, text, colour, font, *, below):
    x, y = anchor
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    y0 = y if below else max(0.0, y - h)
    draw.rectangle([x, y0, x + w, y0 + h], fill=colour)
    text_colour = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    draw.text((x + 2 - left, y0 + 2 - top), text, fill=text_colour, font=font)


def _dashed_rectangle(draw, box, colour, width, dash=6):
    x1, y1, x2, y2 = (float(v) for v in box)
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)),
                               ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        for start in np.arange(0.0, length, 2 * dash):
            t0, t1 = start / length, min(start + dash, length) / length
            draw.line([ax + (bx - ax) * t0, ay + (by - ay) * t0,
                       ax + (bx - ax) * t1, ay + (by - ay) * t1], fill=colour, width=width)


def plot_pr_curves(
    result: dict,
    class_names: Sequence[str],
    path: str,
    *,
    title: str | None = None,
) -> None:
    """Plots each class's precision-recall curve, AP in the legend, and saves a PNG.

    Args:
      result: what `eval_detection_voc` returns ("precision", "recall", "ap", "map").
      class_names: label k's name.
      path: PNG file to write (folders created).
      title: figure title; default the mAP.
    """
    for key in ("precision", "recall", "ap"):
        if key not in result:
            raise ValueError(f"result needs {key!r} (pass what eval_detection_voc returns)")
    figure = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for k, name in enumerate(class_names):
        recall, precision = result["recall"][k], result["precision"][k]
        if np.isnan(result["ap"][k]):
            continue  # no ground truth: recall is undefined
        # The curve starts at recall 0 with the first detection's precision (0 with none).
        start = precision[:1] if len(precision) else np.zeros(1)
        axes.step(np.concatenate([[0.0], recall]), np.concatenate([start, precision]),
                  where="post", color=np.array(class_colour(k)) / 255.0,
                  label=f"{name} (AP {result['ap'][k]:.3f})")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.05)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower left", fontsize="small")
    axes.set_title(title if title is not None else f"mAP {result.get('map', float('nan')):.4f}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, format="png")


def picture_grid(tiles: Sequence[Image.Image], path: str, *, columns: int = 4, gap: int = 4) -> None:
    """Saves `tiles` (e.g. `draw_detections` pictures) as one PNG, row by row, `columns` to a row,
    each in a cell of the largest tile's size, `gap` dark pixels between them; nothing for no tiles."""
    if not tiles:
        return
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    grid = Image.new("RGB", (columns * cell_w + (columns + 1) * gap, rows * cell_h + (rows + 1) * gap), (32, 32, 32))
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        grid.paste(tile, (gap + c * (cell_w + gap), gap + r * (cell_h + gap)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path, format="PNG")
