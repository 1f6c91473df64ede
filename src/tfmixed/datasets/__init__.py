"""Small datasets shipped with tfmixed (the classic lme4 and R examples).

>>> from tfmixed import datasets
>>> datasets.load("sleepstudy").shape
(180, 3)
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from ..errors import DataError

#: name -> (file, grouping columns that must be read as strings, one-line description)
_CATALOGUE = {
    "sleepstudy": ("sleepstudy.csv", ("Subject",), "Reaction times (ms) of 18 subjects over 10 days of sleep deprivation"),
    "iris": ("iris.csv", (), "Fisher's iris measurements (150 flowers, 3 species)"),
    "Dyestuff": ("Dyestuff.csv", ("Batch",), "Yield of dyestuff from 6 batches of an intermediate product"),
    "Dyestuff2": ("Dyestuff2.csv", ("Batch",), "Simulated Dyestuff-like data whose batch variance estimate is 0"),
    "Penicillin": ("Penicillin.csv", ("plate", "sample"), "Penicillin potency: 24 plates crossed with 6 samples"),
    "Pastes": ("Pastes.csv", ("batch", "cask", "sample"), "Paste strength: casks nested within 10 delivery batches"),
    "cbpp": ("cbpp.csv", ("herd", "period"),
             "Contagious bovine pleuropneumonia: new cases (incidence) among size cattle, 15 herds x 4 periods"),
    "Salamanders": ("Salamanders.csv", ("site", "mined", "spp"),
                    "glmmTMB's Salamanders: salamander counts at 23 stream sites (mined or not), 7 species x 4 surveys"),
    "InstEval": ("InstEval.csv", ("s", "d", "studage", "lectage", "service", "dept"),
                 "lme4's InstEval: 73,421 course ratings of 1,128 lecturers by 2,972 students (ETH Zurich)"),
}


def names() -> list[str]:
    """Return the names of the built-in datasets."""
    return sorted(_CATALOGUE)


def describe(name: str) -> str:
    """Return a one-line description of dataset ``name``."""
    return _CATALOGUE[_resolve(name)][2]


def _resolve(name: str) -> str:
    lookup = {key.lower(): key for key in _CATALOGUE}
    try:
        return lookup[name.lower()]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(names())}") from None


def load(name: str) -> pd.DataFrame:
    """Load a built-in dataset as a pandas DataFrame.

    Grouping columns are read as strings, so numeric codes such as sleepstudy's ``Subject`` are categorical.

    >>> load("iris").columns.tolist()[:2]
    ['Sepal.Length', 'Sepal.Width']
    """
    key = _resolve(name)
    filename, grouping, _ = _CATALOGUE[key]
    with resources.files(__package__).joinpath("data").joinpath(filename).open("r") as handle:
        return pd.read_csv(handle, dtype={column: str for column in grouping})


def simulate_crossed(
    n_obs: int = 73_421,
    levels: tuple[int, ...] = (2_972, 1_128, 28),
    sds: tuple[float, ...] = (0.32, 0.52, 0.08),
    residual_sd: float = 1.18,
    seed: int = 0,
    frequencies: str = "uniform",
    zipf_exponent: float = 1.0,
) -> pd.DataFrame:
    """Simulate a crossed random-intercepts design shaped like lme4's InstEval, or like MovieLens.

    y = 3.2 + 0.05 * service + a[g1] + b[g2] + c[g3] + e, with factors g1..gm of ``levels`` levels,
    random intercepts N(0, sds[t]^2) and e ~ N(0, residual_sd^2). Every level is observed at least once; the
    other rows pick levels uniformly (``frequencies="uniform"``) or with Zipf-like probabilities
    p_j ~ 1 / (j + 1)^s, s = ``zipf_exponent`` (``"zipf"``: a few users rate most, most movies are rarely
    rated, as in MovieLens), each factor's ranks shuffled independently. Rows are generated in blocks, so
    tens of millions fit in memory as int32 codes.

    >>> frame = simulate_crossed(n_obs=500, levels=(40, 12, 3), seed=1)
    >>> frame.shape, frame["g1"].nunique()
    ((500, 5), 40)
    >>> zipf = simulate_crossed(n_obs=20_000, levels=(1_000, 200), sds=(0.5, 0.5), frequencies="zipf", seed=1)
    >>> counts = zipf["g1"].value_counts()
    >>> bool(counts.iloc[:10].sum() > 0.15 * len(zipf) and counts.min() >= 1)
    True
    """
    import numpy as np

    if len(sds) != len(levels):
        raise DataError("simulate_crossed needs one standard deviation per factor")
    if n_obs < max(levels):
        raise DataError("n_obs must be at least the largest number of levels")
    if frequencies not in ("uniform", "zipf"):
        raise DataError(f"frequencies must be 'uniform' or 'zipf', got {frequencies!r}")
    if not zipf_exponent > 0:
        raise DataError(f"zipf_exponent must be positive, got {zipf_exponent!r}")
    rng = np.random.default_rng(seed)
    frame = {}
    response = 3.2 + rng.normal(scale=residual_sd, size=n_obs)
    service = rng.integers(0, 2, size=n_obs)
    response += 0.05 * service
    for index, (count, sd) in enumerate(zip(levels, sds), start=1):
        codes = np.concatenate([np.arange(count), _level_draws(rng, count, n_obs - count, frequencies, zipf_exponent)])
        rng.shuffle(codes)
        response += rng.normal(scale=sd, size=count)[codes]
        frame[f"g{index}"] = pd.Categorical.from_codes(codes, categories=[f"L{i}" for i in range(count)])
    frame["service"] = np.where(service == 1, "yes", "no")
    frame["y"] = response
    return pd.DataFrame(frame)[["y", "service", *[f"g{i}" for i in range(1, len(levels) + 1)]]]


def _level_draws(rng, count: int, size: int, frequencies: str, exponent: float):
    """``size`` level codes 0..count-1, uniform or Zipf-like (ranks assigned to levels at random)."""
    import numpy as np

    if frequencies == "uniform":
        return rng.integers(0, count, size=size).astype(np.int32)
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    cumulative = np.cumsum(weights / weights.sum())
    ranks_to_levels = rng.permutation(count).astype(np.int32)
    out = np.empty(size, dtype=np.int32)
    for start in range(0, size, 1 << 22):  # blocks of 4M draws keep the uniforms' memory small
        stop = min(size, start + (1 << 22))
        ranks = np.minimum(np.searchsorted(cumulative, rng.random(stop - start)), count - 1)
        out[start:stop] = ranks_to_levels[ranks]
    return out
