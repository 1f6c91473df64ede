import numpy as np
import pytest
from conftest import load_reference

import tensorflow as tf
from tfmixed import DataError, LinearRegression, RankDeficientError, ShapeError, datasets

FORMULA = "Sepal.Length ~ Sepal.Width + Petal.Length"


@pytest.fixture(scope="module")
def iris():
    data = datasets.load("iris")
    X = np.column_stack([np.ones(len(data)), data["Sepal.Width"], data["Petal.Length"]])
    return X, data["Sepal.Length"].to_numpy()


def test_exact_fit_equals_r_lm():
    ref = load_reference("iris_ols")
    model = LinearRegression.from_formula(FORMULA, datasets.load("iris")).fit()
    assert model.coef.index.tolist() == ["(Intercept)", "Sepal.Width", "Petal.Length"]
    np.testing.assert_allclose(model.coef, list(ref["coef"].values()), rtol=1e-8)
    np.testing.assert_allclose(model.se, list(ref["se"].values()), rtol=1e-8)
    assert model.sigma == pytest.approx(ref["sigma"], rel=1e-8)
    assert model.r2 == pytest.approx(ref["r2"], rel=1e-8)
    assert list(model.summary().columns) == ["coef", "std err", "t", "P>|t|"]


def test_seed_sgd_training_reaches_ols(iris):
    X, y = iris
    ols = np.linalg.lstsq(X, y, rcond=None)[0]
    model = LinearRegression(3)
    model.fit(X, y.reshape(-1, 1), method="gradient",
              optimizer=tf.keras.optimizers.SGD(learning_rate=0.01, momentum=0.98), epochs=1000, verbose=False)
    np.testing.assert_allclose(model.coef, ols, atol=1e-4)
    assert model.history[-1] < model.history[0]
    assert len(model.trainable_variables) == 1


def test_one_dimensional_y_is_not_a_trap(iris):
    X, y = iris
    column = LinearRegression(3).fit(X, y.reshape(-1, 1)).coef
    vector = LinearRegression(3).fit(X, y).coef
    np.testing.assert_array_equal(column, vector)
    sgd_vector = LinearRegression(3).fit(X, y, method="gradient", epochs=50, verbose=False).coef
    sgd_column = LinearRegression(3).fit(X, y.reshape(-1, 1), method="gradient", epochs=50, verbose=False).coef
    np.testing.assert_allclose(sgd_vector, sgd_column)


@pytest.mark.parametrize(
    "X_shape, y_shape, error",
    [((150, 3), (149,), ShapeError), ((150, 3), (150, 2), ShapeError), ((150,), (150,), ShapeError), ((150, 2), (150,), DataError)],
)
def test_mismatched_shapes_raise(X_shape, y_shape, error):
    with pytest.raises(error):
        LinearRegression(3).fit(np.ones(X_shape), np.ones(y_shape))


def test_nan_and_rank_deficiency(iris):
    X, y = iris
    bad = y.copy()
    bad[0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        LinearRegression(3).fit(X, bad)
    with pytest.raises(RankDeficientError):
        LinearRegression(3).fit(np.column_stack([X[:, :2], 2 * X[:, 1]]), y)


def test_ridge_exact_solves_its_normal_equations_and_matches_gradient(iris):
    X, y = iris
    alpha = 0.05
    ridge = LinearRegression(3).fit(X, y, penalty="ridge", alpha=alpha)
    beta = ridge.coef.to_numpy()
    gradient = -2 * X.T @ (y - X @ beta) / len(y) + 2 * alpha * np.array([0, 1, 1]) * beta
    np.testing.assert_allclose(gradient, 0, atol=1e-10)
    trained = LinearRegression(3).fit(X, y, method="gradient", penalty="ridge", alpha=alpha, epochs=3000,
                                      optimizer=tf.keras.optimizers.SGD(0.01, momentum=0.98), verbose=False)
    np.testing.assert_allclose(trained.coef, beta, atol=1e-4)
    assert np.isnan(ridge.se).all()


def test_lasso_satisfies_kkt_conditions(iris):
    X, y = iris
    alpha = 0.2
    beta = LinearRegression(3).fit(X, y, penalty="lasso", alpha=alpha).coef.to_numpy()
    gradient = -2 * X.T @ (y - X @ beta) / len(y)
    assert gradient[0] == pytest.approx(0, abs=1e-8)
    for j in (1, 2):
        if beta[j] != 0:
            assert gradient[j] == pytest.approx(-alpha * np.sign(beta[j]), abs=1e-8)
        else:
            assert abs(gradient[j]) <= alpha + 1e-8
    assert np.sum(beta[1:] == 0) >= 1  # a strong penalty zeroes a coefficient


def test_invalid_options(iris):
    X, y = iris
    with pytest.raises(DataError):
        LinearRegression(3).fit(X, y, method="newton")
    with pytest.raises(DataError):
        LinearRegression(3).fit(X, y, penalty="elastic")
    with pytest.raises(DataError):
        LinearRegression.from_formula("Sepal.Length ~ Sepal.Width + (1 | Species)", datasets.load("iris"))


def test_weights_and_offset_match_r_lm():
    """R 4.2.2: lm(Sepal.Length ~ Sepal.Width + Petal.Length + offset(o), iris, weights = w),
    w = 1 + ((row - 1) %% 4) / 2, o = 0.1 Petal.Width."""
    iris = datasets.load("iris")
    iris["w"] = 1 + (np.arange(150) % 4) / 2
    iris["o"] = 0.1 * iris["Petal.Width"]
    model = LinearRegression.from_formula("Sepal.Length ~ Sepal.Width + Petal.Length + offset(o)", iris, weights="w").fit()
    np.testing.assert_allclose(model.coef, [2.14345903787462, 0.62928072192914, 0.443519167310045], rtol=1e-10)
    np.testing.assert_allclose(model.se, [0.25935017344051, 0.0723985326979138, 0.0177083768363972], rtol=1e-10)
    assert model.sigma == pytest.approx(0.447696693263411, rel=1e-10)
    # R's weighted R^2 (summary.lm) without an offset, where R 4.2's definition and tfmixed's coincide
    no_offset = LinearRegression.from_formula("Sepal.Length ~ Sepal.Width + Petal.Length", iris, weights="w").fit()
    assert no_offset.r2 == pytest.approx(0.844642531932143, rel=1e-12)
    # the same through arrays, and the offset carried into predictions
    X = np.column_stack([np.ones(150), iris["Sepal.Width"], iris["Petal.Length"]])
    again = LinearRegression(3).fit(X, iris["Sepal.Length"], weights=iris["w"], offset=iris["o"])
    np.testing.assert_allclose(again.coef, model.coef, rtol=1e-12)
    expected = X[:2] @ model.coef.to_numpy() + iris["o"].to_numpy()[:2]
    np.testing.assert_allclose(again.predict(X[:2], offset=iris["o"][:2]).numpy()[:, 0], expected, rtol=1e-12)
    with pytest.raises(DataError, match="weights"):
        LinearRegression(3).fit(X, iris["Sepal.Length"], weights=-np.ones(150))
