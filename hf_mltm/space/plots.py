"""Pictures of the Space: the transport-plan heatmap and the word-to-grid overlays, rendered off-screen (matplotlib's
Agg backend, or Pillow alone) into `PIL.Image.Image` values that any UI can show."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = ["grid_overlay", "plan_heatmap"]


def _figure_to_image(figure) -> Image.Image:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


def plan_heatmap(plan: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *,
                 row_left: np.ndarray | None = None, col_left: np.ndarray | None = None,
                 title: str = "") -> Image.Image:
    """A heatmap of an OT plan ``(n, C)`` whose capacities sum to 1, with every cell's mass written in it in percent
    of the total capacity (a balanced plan's cells sum to 100 %, a partial plan's to ``100 * mass`` %).

    With partial transport, ``row_left`` ``(n,)`` and ``col_left`` ``(C,)`` (capacity left untransported) are drawn
    as an extra hatched column and row labelled "left out", so the clips and captions the plan leaves aside stand
    out.

    Returns:
        `PIL.Image.Image`: an RGB picture.

    Raises:
        ValueError: the labels do not match the plan's shape.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plan = np.asarray(plan, dtype=np.float64)
    n, c = plan.shape
    if len(row_labels) != n or len(col_labels) != c:
        raise ValueError(f"plan of shape {plan.shape} needs {n} row labels and {c} column labels, got "
                         f"{len(row_labels)} and {len(col_labels)}.")
    partial = row_left is not None and col_left is not None and (row_left.sum() + col_left.sum()) > 1e-9
    shown = plan
    if partial:
        shown = np.zeros((n + 1, c + 1))
        shown[:n, :c], shown[:n, c], shown[n, :c] = plan, row_left, col_left
    peak = max(plan.max(), 1e-12)
    figure, axes = plt.subplots(figsize=(1.6 + 1.25 * shown.shape[1], 1.0 + 0.55 * shown.shape[0]))
    axes.imshow(shown, cmap="viridis", vmin=0, vmax=peak, aspect="auto")
    for i in range(shown.shape[0]):
        for j in range(shown.shape[1]):
            if partial and i == n and j == c:
                continue
            axes.text(j, i, f"{100 * shown[i, j]:.1f}%", ha="center", va="center", fontsize=8,
                      color="black" if shown[i, j] > 0.6 * peak else "white")
    xlabels = ["\n".join(textwrap.wrap(label, 16)[:3]) for label in col_labels]
    ylabels = list(row_labels)
    if partial:
        xlabels.append("left out")
        ylabels.append("left out")
        axes.add_patch(matplotlib.patches.Rectangle((c - 0.5, -0.5), 1, n, fill=False, hatch="//", color="orange"))
        axes.add_patch(matplotlib.patches.Rectangle((-0.5, n - 0.5), c, 1, fill=False, hatch="//", color="orange"))
    axes.set_xticks(range(len(xlabels)), xlabels, fontsize=8)
    axes.set_yticks(range(len(ylabels)), ylabels, fontsize=8)
    axes.tick_params(top=True, labeltop=True, bottom=False, labelbottom=False)
    if title:
        axes.set_title(title, fontsize=9, pad=28 + 10 * max(len(x.splitlines()) for x in xlabels))
    return _figure_to_image(figure)


def _colours(values: np.ndarray) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["inferno"](values)[..., :3] * 255).astype(np.uint8)


def grid_overlay(image: Image.Image, grid_mass: np.ndarray, *, alpha: float = 0.6) -> Image.Image:
    """Blend a ``(h, w)`` grid of mass over a picture: each cell covers ``1/h`` of the height and ``1/w`` of the
    width (cell ``(i, j)`` is fragment ``w * i + j``, row-major as the CNN's feature map), coloured by its share of
    the largest cell (dark: none, bright: most).

    Args:
        image (`PIL.Image.Image`): the picture the model saw (e.g. the 224 x 224 centre crop).
        grid_mass (`np.ndarray` of shape `(h, w)`): non-negative mass per cell.
        alpha (`float`, defaults to 0.6): opacity of the colour layer.

    Returns:
        `PIL.Image.Image`: an RGB picture of the size of ``image``.

    Raises:
        ValueError: ``grid_mass`` is not 2-D, or holds negative or non-finite values.
    """
    grid_mass = np.asarray(grid_mass, dtype=np.float64)
    if grid_mass.ndim != 2 or not np.isfinite(grid_mass).all() or (grid_mass < 0).any():
        raise ValueError(f"grid_mass must be a finite, non-negative (h, w) array, got shape {grid_mass.shape}.")
    peak = grid_mass.max()
    relative = grid_mass / peak if peak > 0 else grid_mass
    colours = Image.fromarray(_colours(relative)).resize(image.size, Image.Resampling.NEAREST)
    return Image.blend(image.convert("RGB"), colours, alpha)
