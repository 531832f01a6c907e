"""Pictures, drawn with matplotlib (the optional `[plot]` extra): the confusion matrix of `evaluate`."""

from __future__ import annotations

from typing import BinaryIO

MAX_CLASSES = 50  # beyond this a matrix is unreadable: show the classes most involved in mistakes


def most_confused(labels: list[str], matrix: list[list[int]], limit: int = MAX_CLASSES) -> list[int]:
    """The rows to draw: all of them up to `limit`; over that, the `limit` classes with the most mistakes made
    on them or into them (ties by class order), in class order."""
    n = len(labels)
    if n <= limit:
        return list(range(n))
    errors = [sum(matrix[i]) - matrix[i][i] + sum(matrix[j][i] for j in range(n) if j != i) for i in range(n)]
    chosen = sorted(range(n), key=lambda i: (-errors[i], i))[:limit]
    return sorted(chosen)


def confusion_grid(labels: list[str], matrix: list[list[int]]) -> tuple[list[int], list[list[int]], bool]:
    """What a picture or a table of the matrix shows: (the classes kept, by `most_confused`; their rows' counts
    over the kept classes plus one last column, "other", where the columns of the classes left out join the
    predictions outside the data, so that every row still sums to its support; whether classes were left out)."""
    keep = most_confused(labels, matrix)
    kept = set(keep)
    rest = [j for j in range(len(labels) + 1) if j not in kept]
    grid = [[matrix[i][j] for j in keep] + [sum(matrix[i][j] for j in rest if j < len(matrix[i]))] for i in keep]
    return keep, grid, len(keep) < len(labels)


def confusion_png(out: BinaryIO, labels: list[str], matrix: list[list[int]], *, title: str) -> None:
    """Rows are true classes, columns predicted ones plus "other" (a class outside the data); each row is
    normalised to sum to 1, so a cell is the share of that class's images predicted as the column's class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keep, rows, dropped = confusion_grid(labels, matrix)
    grid = np.array(rows, dtype=float)
    support = grid.sum(axis=1, keepdims=True)
    share = np.divide(grid, support, out=np.zeros_like(grid), where=support > 0)

    names = [labels[i] for i in keep]
    n = len(names)
    side = max(4.0, 0.32 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=110)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n + 1), [*names, "other" if not dropped else "other / not shown"], rotation=60,
                  ha="right", fontsize=8)
    ax.set_yticks(range(n), [f"{name} ({int(s)})" for name, s in zip(names, support[:, 0])], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (images)")
    shown = f"{n} of {len(labels)} classes, the most confused" if dropped else f"{n} classes"
    ax.set_title(f"{title}\n{shown}, each row normalised", fontsize=9)
    if n <= 20:
        for i in range(n):
            for j in range(n + 1):
                if grid[i, j]:
                    ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
