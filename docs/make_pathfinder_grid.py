"""Draw a grid of generated Pathfinder samples, one row per difficulty, to check them by eye.

    python docs/make_pathfinder_grid.py                 # -> docs/pathfinder_samples.png
    python docs/make_pathfinder_grid.py --resolution=64 --out=/tmp/pf64.png

Rows: contour length 6 (LRA curv_baseline), 9, 14 (LRA curv_contour_length_14, the LRA task)
and 20; titles give the label (1: the two markers are joined by one contour).
"""

from __future__ import annotations

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from attn_dynamics.data import pathfinder  # noqa: E402

LENGTHS = (6, 9, 14, 20)


def make_grid(out: str | pathlib.Path, *, resolution: int = 32, per_row: int = 8, seed: int = 0):
    fig, axes = plt.subplots(
        len(LENGTHS), per_row, figsize=(1.6 * per_row, 1.75 * len(LENGTHS)), squeeze=False
    )
    for row, length in enumerate(LENGTHS):
        spec = pathfinder.Spec.make(resolution, length)
        for col in range(per_row):
            image, label = pathfinder.generate_image(spec, seed, col)
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"label {label}", fontsize=8)
            if col == 0:
                ax.set_ylabel(
                    f"{pathfinder.difficulty_name(length)}\n({length} paddles)", fontsize=7
                )
    fig.suptitle(f"generated Pathfinder, {resolution}x{resolution}, seed {seed}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return pathlib.Path(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = pathlib.Path(__file__).with_name("pathfinder_samples.png")
    parser.add_argument("--out", default=str(here))
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_grid(args.out, resolution=args.resolution, seed=args.seed))


if __name__ == "__main__":
    main()
