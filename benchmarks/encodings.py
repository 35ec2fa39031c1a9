"""Latent reconstruction cost of each /embed encoding, for latents that follow the prior.

    python benchmarks/encodings.py [--n 100000] [--dim 8]

For a unit gaussian and a uniform(-5, 5) prior: encode prior samples with each registered
encoding, decode them back, and report the mean squared, mean absolute and max absolute
error. Prints a markdown table for benchmarks/RESULTS.md (and the README's numbers).
"""

from __future__ import annotations

import argparse

import numpy as np

from sculptserve.serving.encodings import ENCODINGS, decode_embeddings, encode_embeddings
from sculptserve.stats.priors import parse_prior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    print(f"n = {args.n}, d = {args.dim}, seed {args.seed}\n")
    print("| prior | encoding | bytes/dim | MSE | mean abs | max abs |")
    print("|---|---|---|---|---|---|")
    for spec in ("gaussian", "uniform(-5,5)"):
        prior = parse_prior(spec, dim=args.dim)
        z = prior.sample(args.n, args.seed).astype(np.float32)
        for name in ENCODINGS:
            codes = encode_embeddings(z, prior, name)
            err = decode_embeddings(codes, prior, name).astype(np.float64) - z
            print(
                f"| {spec} | {name} | {codes.dtype.itemsize} | {np.mean(err**2):.3g} | "
                f"{np.mean(np.abs(err)):.3g} | {np.max(np.abs(err)):.3g} |"
            )


if __name__ == "__main__":
    main()
