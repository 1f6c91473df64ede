"""One set of checks for every data path: a bad option raises the same DataError whether the rows are in memory
or partitioned, before any pass over the data; what a partitioned fit cannot do is refused at once (issue 28)."""


import numpy as np
import pytest

import tfmixed as tm
from tfmixed.errors import DataError, FormulaError

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def sleep():
    frame = tm.datasets.load("sleepstudy").copy()
    frame.loc[[3, 50], "Days"] = np.nan
    return frame


BAD_OPTIONS = [
    ({"missing": "maybe"}, "missing must be one of"),
    ({"rank_deficient": "rais"}, "rank_deficient must be one of"),
    ({"REML": "yes"}, "REML must be True or False"),
    ({"verbose": "no"}, "verbose must be True or False"),
    ({"max_iter": 0}, "max_iter must be a positive integer"),
    ({"backend": "gpu"}, "backend must be one of"),
    ({"method": "newton"}, "method must be"),
]


def _both_paths(frame, client):
    """(data, extra options) for the in-memory and the partitioned fit of the same rows."""
    return [(frame, {}), (dd.from_pandas(frame, npartitions=3), {"client": client})]


@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=[next(iter(o)) for o, _ in BAD_OPTIONS])
def test_bad_options_raise_the_same_error_on_both_paths(sleep, client, options, message):
    errors = []
    for data, extra in _both_paths(sleep, client):
        with pytest.raises(DataError, match=message) as caught:
            tm.lmer("Reaction ~ Days + (1 | Subject)", data, **extra, **options)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


def test_formula_that_is_no_string(sleep, client):
    for data, extra in _both_paths(sleep, client):
        with pytest.raises(FormulaError, match="formula must be a string"):
            tm.lmer(42, data, **extra)


def test_case_of_a_choice_does_not_change_the_fit(sleep, client):
    formula = "Reaction ~ Days + (1 | Subject)"
    memory = tm.lmer(formula, sleep, missing="Drop", verbose=False)
    partitioned = tm.lmer(formula, dd.from_pandas(sleep, npartitions=3), missing="Drop", client=client, verbose=False)
    assert memory.nobs == partitioned.nobs == 178
    assert partitioned.deviance == pytest.approx(memory.deviance, rel=1e-10)


def test_weights_must_be_a_column_on_partitions(sleep, client):
    with pytest.raises(DataError, match="weights must be the name of a column"):
        tm.lmer("Reaction ~ Days + (1 | Subject)", dd.from_pandas(sleep.dropna(), npartitions=2),
                weights=np.ones(178), client=client)


def test_what_needs_rows_is_refused_at_once_on_partitions(sleep, client):
    fit = tm.lmer("Reaction ~ Days + (Days | Subject)", dd.from_pandas(sleep.dropna(), npartitions=3),
                  client=client, verbose=False)
    for call in (lambda: fit.confint(), lambda: fit.confint("boot", n_boot=5), lambda: fit.profile(),
                 lambda: fit.bootstrap(5), lambda: fit.simulate(2), lambda: fit.plot_residuals(),
                 lambda: fit.plot_qq("residuals")):
        with pytest.raises(DataError, match="partitioned"):
            call()
    wald = fit.confint("Wald")
    assert np.isfinite(wald.loc["Days"]).all()


def _bad_data():
    """(name, frame, formula, options, error or warning, message): one data problem each, as a user meets them."""
    sleep = tm.datasets.load("sleepstudy")
    one_level = sleep.assign(Subject="s1")
    huge = sleep.assign(Reaction=sleep.Reaction * 1e160)
    aliased = sleep.assign(Days2=2.0 * sleep.Days)
    per_row = sleep.assign(row=np.arange(len(sleep)).astype(str))
    missing = sleep.astype({"Days": float})
    missing.loc[[3, 50, 51], "Days"] = np.nan
    return [
        ("missing values", missing, "Reaction ~ Days + (1 | Subject)", {}, DataError, "missing values"),
        ("one level", one_level, "Reaction ~ Days + (1 | Subject)", {}, DataError, "only 1 level"),
        ("level per row", per_row, "Reaction ~ Days + (1 | row)", {}, DataError, "confounded with the residual"),
        ("too large", huge, "Reaction ~ Days + (1 | Subject)", {}, DataError, "too large to square"),
        ("aliased", aliased, "Reaction ~ Days + Days2 + (1 | Subject)", {"rank_deficient": "raise"},
         tm.errors.RankDeficientError, "linear combinations"),
    ]


@pytest.mark.parametrize("case", _bad_data(), ids=lambda case: case[0])
def test_bad_data_gives_the_same_error_on_both_paths(client, case):
    _, frame, formula, options, error, message = case
    errors = []
    for data, extra in _both_paths(frame, client):
        with pytest.raises(error, match=message) as caught:
            tm.lmer(formula, data, verbose=False, **extra, **options)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


def test_dropped_rows_and_columns_are_reported_alike_on_both_paths(client):
    sleep = tm.datasets.load("sleepstudy")
    frame = sleep.assign(Days2=2.0 * sleep.Days).astype({"Days": float})
    frame.loc[[3, 50, 51], "Days"] = np.nan
    messages, fits = [], []
    for data, extra in _both_paths(frame, client):
        with pytest.warns(Warning) as caught:
            fits.append(tm.lmer("Reaction ~ Days + Days2 + (1 | Subject)", data, missing="drop", verbose=False,
                                **extra))
        messages.append(sorted(str(w.message) for w in caught if "dropp" in str(w.message)))
    assert messages[0] == messages[1]
    assert any("dropped 3 row(s)" in m for m in messages[0]) and any("Days2" in m for m in messages[0])
    assert fits[0].nobs == fits[1].nobs == 177
    assert list(fits[0].fixef.index) == list(fits[1].fixef.index) == ["(Intercept)", "Days"]
    assert fits[1].deviance == pytest.approx(fits[0].deviance, rel=1e-10)
    np.testing.assert_allclose(np.asarray(fits[1].fitted.compute()), np.asarray(fits[0].fitted), rtol=1e-9)
