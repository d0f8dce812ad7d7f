"""Plot a grid of built-in dataset samples titled with their Chain-of-Region labels.

  python scripts/plot_builtin_samples.py [--n 12] [--split test] [--image_size 112]
                                         [--out scripts/figures/builtin_samples.png]

Builds the default dataset first if it is not cached (~15-30 s).
"""
import argparse
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from geojax.data import builtin  # noqa: E402


def pick(examples: list, n: int, seed: int = 0) -> list:
  """n examples spread over continents/countries: round-robin over countries, plus one open-sea tile."""
  rng = np.random.default_rng(seed)
  sea = [e for e in examples if not e["locatable"]]
  by_country = {}
  for e in rng.permutation(len(examples)):
    ex = examples[int(e)]
    if ex["locatable"]:
      by_country.setdefault(ex["country"], []).append(ex)
  countries = list(by_country)
  chosen = [by_country[c][0] for c in countries[:n - 1 if sea else n]]
  return chosen + sea[:1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=12)
  parser.add_argument("--split", default="test")
  parser.add_argument("--cols", type=int, default=4)
  parser.add_argument("--image_size", type=int, default=builtin.DEFAULT_PARAMS["image_size"])
  parser.add_argument("--out", default=str(Path(__file__).parent / "figures" / "builtin_samples.png"))
  args = parser.parse_args()

  data_dir = builtin.build_if_missing(image_size=args.image_size)
  examples = pick(builtin.load_split(data_dir, args.split), args.n)
  rows = -(-len(examples) // args.cols)
  fig, axes = plt.subplots(rows, args.cols, figsize=(3.6 * args.cols, 4.5 * rows))
  for ax in np.ravel(axes):
    ax.axis("off")
  for ax, ex in zip(np.ravel(axes), examples):
    ax.imshow(builtin.decode_image(ex["image"]), interpolation="nearest")
    title = ex["label"].replace(" / ", "\n")
    if not ex["locatable"]:
      title = "[not locatable: open sea]\n" + title
    ax.set_title(title, fontsize=7.5, loc="left")
    ax.text(0, 1.0, "\n".join(textwrap.wrap("clues: " + ", ".join(ex["clues"]), 48)), fontsize=6.5,
            transform=ax.transAxes, va="top", ha="left", color="white",
            bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "linewidth": 0})
  fig.suptitle(f"geojax built-in dataset ({args.split} split): map tiles with Chain-of-Region labels", fontsize=11)
  fig.tight_layout(rect=(0, 0, 1, 0.97))
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(args.out, dpi=110)
  print(f"wrote {args.out} ({len(examples)} samples from {data_dir})")


if __name__ == "__main__":
  main()
