import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tfmixed import DataError, FormulaError, RankDeficientError, build_design, datasets


def test_sleepstudy_design_is_sparse_and_in_lme4_order():
    design = build_design("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"))
    assert design.X.shape == (180, 2)
    assert sp.issparse(design.Z) and design.Z.shape == (180, 36)
    assert design.Z.nnz == 360
    term = design.terms[0]
    assert term.columns == ("(Intercept)", "Days")
    assert term.levels[:3].astype(str).tolist() == ["308", "309", "310"]
    # b is ordered level by level: columns 0, 1 are subject 308's intercept and slope
    first_subject = design.Z[:, :2].toarray()[:10]
    np.testing.assert_allclose(first_subject, np.column_stack([np.ones(10), np.arange(10)]))


def test_terms_sorted_by_number_of_levels_and_nested_names():
    design = build_design("strength ~ 1 + (1 | batch/cask)", datasets.load("Pastes"))
    assert [(t.name, t.n_levels) for t in design.terms] == [("cask:batch", 30), ("batch", 10)]
    assert design.terms[0].levels[:2].tolist() == ["a:A", "a:B"]


def test_uncorrelated_terms_split_columns():
    design = build_design("Reaction ~ Days + (Days || Subject)", datasets.load("sleepstudy"))
    assert [(t.name, t.columns) for t in design.terms] == [("Subject", ("(Intercept)",)), ("Subject", ("Days",))]


def test_interaction_grouping_observed_combinations_only():
    data = pd.DataFrame({"y": np.arange(8.0), "a": list("aabbaabb"), "b": list("xyxyxxxx")})
    design = build_design("y ~ 1 + (1 | a:b)", data)
    assert design.terms[0].levels.tolist() == ["a:x", "a:y", "b:x", "b:y"]


def test_numeric_grouping_column_is_categorical_sorted_numerically():
    data = pd.DataFrame({"y": np.arange(6.0), "g": [10, 9, 10, 9, 100, 100]})
    design = build_design("y ~ 1 + (1 | g)", data)
    assert design.terms[0].levels.tolist() == [9, 10, 100]


def test_unknown_column_is_named():
    with pytest.raises(FormulaError, match="Dayz"):
        build_design("Reaction ~ Dayz + (1 | Subject)", datasets.load("sleepstudy"))
    with pytest.raises(FormulaError, match="Subjekt"):
        build_design("Reaction ~ Days + (1 | Subjekt)", datasets.load("sleepstudy"))


def test_missing_values_raise_or_drop():
    data = datasets.load("sleepstudy")
    data.loc[3, "Days"] = np.nan
    with pytest.raises(DataError, match="Days"):
        build_design("Reaction ~ Days + (1 | Subject)", data)
    with pytest.warns(UserWarning, match="dropped 1 row"):
        design = build_design("Reaction ~ Days + (1 | Subject)", data, missing="drop")
    assert design.nobs == 179


def test_non_numeric_response():
    data = datasets.load("sleepstudy").assign(Reaction=lambda d: d.Reaction.astype(str))
    with pytest.raises(DataError, match="numeric"):
        build_design("Reaction ~ Days + (1 | Subject)", data)


def test_grouping_factor_with_one_level():
    data = datasets.load("sleepstudy").assign(one="A")
    with pytest.raises(DataError, match="only 1 level"):
        build_design("Reaction ~ Days + (1 | one)", data)


def test_grouping_factor_with_a_level_per_observation():
    data = datasets.load("sleepstudy").reset_index()
    with pytest.raises(DataError, match="confounded"):
        build_design("Reaction ~ Days + (1 | index)", data)


def test_rank_deficient_fixed_effects():
    """lme4 drops the later aliased column with a message; rank_deficient="raise" refuses instead."""
    from tfmixed import RankDeficiencyWarning

    data = datasets.load("sleepstudy").assign(Days2=lambda d: 2 * d.Days)
    with pytest.raises(RankDeficientError, match="Days2"):
        build_design("Reaction ~ Days + Days2 + (1 | Subject)", data, rank_deficient="raise")
    with pytest.warns(RankDeficiencyWarning, match="dropping 1 column"):
        design = build_design("Reaction ~ Days + Days2 + (1 | Subject)", data)
    assert design.fixed_names == ["(Intercept)", "Days"] and design.dropped_fixed == ["Days2"]


def test_data_must_be_a_frame():
    with pytest.raises(DataError, match="data frame"):
        build_design("y ~ 1 + (1 | g)", [1, 2, 3])


def test_coefficient_names_follow_lme4():
    data = datasets.load("iris").assign(g=lambda d: np.repeat(np.arange(15), 10).astype(str))
    design = build_design("Sepal.Length ~ Species * Sepal.Width + (1 | g)", data)
    assert design.fixed_names == [
        "(Intercept)", "Speciesversicolor", "Speciesvirginica", "Sepal.Width",
        "Speciesversicolor:Sepal.Width", "Speciesvirginica:Sepal.Width",
    ]


def test_unique_with_inverse_is_numpys_unique():
    from tfmixed.levels import unique_with_inverse

    keys = np.random.default_rng(0).zipf(1.5, 20_000) % 5_000 * 7_919
    expected_unique, expected_inverse = np.unique(keys, return_inverse=True)
    unique, inverse = unique_with_inverse(keys)
    np.testing.assert_array_equal(unique, expected_unique)
    np.testing.assert_array_equal(inverse, expected_inverse.ravel())
