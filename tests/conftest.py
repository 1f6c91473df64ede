import json
from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).parent / "reference"

#: reference file -> built-in dataset it was fitted on
LME4_CASES = {
    "sleepstudy_reml": "sleepstudy",
    "sleepstudy_ml": "sleepstudy",
    "sleepstudy_uncorr": "sleepstudy",
    "sleepstudy_intercept": "sleepstudy",
    "Dyestuff_reml": "Dyestuff",
    "Dyestuff2_singular": "Dyestuff2",
    "Penicillin_crossed": "Penicillin",
    "Pastes_nested": "Pastes",
    # generated here with ../shared/tools/lme4_reference.R (lme4 1.1-31): a correlated random slope on the
    # largest factor, a crossed intercept and a three-level fixed factor
    "crossed_slopes_reml": "crossed_slopes.csv",
    "crossed_slopes_ml": "crossed_slopes.csv",
}


def load_data(source: str):
    """A built-in dataset by name, or a CSV stored beside the references."""
    if source.endswith(".csv"):
        import pandas as pd

        return pd.read_csv(REFERENCE / source)
    from tfmixed import datasets

    return datasets.load(source)


def load_reference(name: str) -> dict:
    return json.loads((REFERENCE / f"{name}.json").read_text())


def as_array(value) -> np.ndarray:
    """R's jsonlite unboxes length-one vectors and keeps names as dicts; undo both."""
    if isinstance(value, dict):
        value = list(value.values())
    return np.atleast_1d(np.asarray(value, dtype=float))


@pytest.fixture(params=sorted(LME4_CASES))
def lme4_case(request):
    return request.param, load_reference(request.param), LME4_CASES[request.param]


@pytest.fixture(scope="module")
def client():
    """A dask.distributed client on an in-process cluster of two single-threaded workers."""
    import warnings

    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        yield client
