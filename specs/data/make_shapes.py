"""Write a toy image-text dataset: coloured shapes with their captions ("a red circle").

Each sample is `<folder>/<index>.png` (a shape of one of COLOURS and SHAPES, of random size near
the centre, on a dark, slightly noisy background) and `<index>.txt` (its caption): the layout of a
`kind: image_text` source with `format: folder`. The caption's colour and shape can be read only
from the image, so a model that sees the images predicts them and a text-only one can only guess
(its loss on them stays near log 4 + log 3). `--blank` writes the same captions over black images:
the text-only baseline. Deterministic from the seed; offline.

    python specs/data/make_shapes.py specs/data/shapes          # what specs/vision-toy.yaml reads
    python specs/data/make_shapes.py /tmp/shapes --count 500 --size 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def draw(shape: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (size, size, 3): `shape` in `colour` on a dark noisy background."""
    image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
    radius = rng.uniform(0.3, 0.45) * size
    cy, cx = size / 2 + rng.uniform(-0.1, 0.1, 2) * size  # near the centre: what differs is colour and shape
    y, x = np.mgrid[0:size, 0:size] + 0.5
    if shape == "circle":
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
    elif shape == "square":
        inside = (np.abs(y - cy) <= radius * 0.85) & (np.abs(x - cx) <= radius * 0.85)
    else:  # a triangle pointing up: below the apex, inside the two slanted sides
        top, bottom = cy - radius, cy + radius
        half = (y - top) / (bottom - top) * radius
        inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half)
    image[inside] = colour
    return image


def make_shapes(folder: Path, count: int = 400, size: int = 16, seed: int = 0, blank: bool = False) -> Path:
    """Write `count` samples into `folder` (created); returns it. `blank`: black images, same captions."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    for index in range(count):
        colour, shape = names[int(rng.integers(len(names)))], SHAPES[int(rng.integers(len(SHAPES)))]
        image = draw(shape, COLOURS[colour], size, rng)
        if blank:
            image = np.zeros_like(image)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
        (folder / f"{index:05d}.txt").write_text(f"a {colour} {shape}\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="Where to write the images and captions (created).")
    parser.add_argument("--count", type=int, default=2000, help="How many samples.")
    parser.add_argument("--size", type=int, default=32, help="Image width and height in pixels.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the colours, shapes and placements.")
    parser.add_argument("--blank", action="store_true", help="Black images (the text-only baseline).")
    args = parser.parse_args()
    make_shapes(args.folder, args.count, args.size, args.seed, args.blank)
    print(f"wrote {args.count} samples to {args.folder}")


if __name__ == "__main__":
    main()
