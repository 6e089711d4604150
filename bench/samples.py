"""Samples of the benchmark scripts (not a test): `kind,value` lines, and their nearest-rank
percentiles. Imported by the scripts' inline Python (they run from the repository's root)."""

import collections
import math


def load(path):
    """The values of each kind in the file, in the order written."""
    samples = collections.defaultdict(list)
    for line in open(path):
        kind, value = line.strip().split(",")
        samples[kind].append(float(value))
    return samples


def rank(values, p):
    """The nearest-rank p-quantile (0 < p <= 1) of values."""
    values = sorted(values)
    return values[max(1, min(len(values), math.ceil(p * len(values)))) - 1]
