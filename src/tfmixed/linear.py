"""The seed's ``IrisReg``, generalised: multiple regression in matrix notation as a ``tf.Module``.

y = X beta + o + e, e_i ~ N(0, sigma^2 / w_i) (prior weights w, offset o: R's ``lm(weights=, offset=)``).
``fit`` solves exactly (QR least squares, closed-form ridge,
coordinate-descent lasso) or trains with ``tf.GradientTape`` and any Keras optimizer, as the seed did.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ._tf import DTYPE, tf
from .arrays import as_matrix, as_response
from .errors import ConvergenceWarning, DataError, NotFittedError, RankDeficientError, TfmixedWarning
from .progress import Progress


class LinearRegression(tf.Module):
    """Linear regression y = X beta + e held in a ``tf.Variable`` ``beta`` of shape (p, 1).

    Loss for gradient training (and the objective of the penalised exact fits)::

        mean((y - X beta)^2) + alpha * ||beta_pen||_2^2   (ridge)   or   + alpha * ||beta_pen||_1   (lasso)

    where beta_pen excludes the intercept column.

    >>> from tfmixed import datasets
    >>> model = LinearRegression.from_formula("Sepal.Length ~ Sepal.Width + Petal.Length", datasets.load("iris"))
    >>> model.fit().coef.round(4).tolist()
    [2.2491, 0.5955, 0.4719]
    """

    def __init__(self, n_features: int, *, feature_names: list[str] | None = None, starting_vector=None, name=None):
        super().__init__(name=name)
        if starting_vector is None:
            starting_vector = np.zeros((n_features, 1))
        start = np.asarray(starting_vector, dtype=np.float64).reshape(-1, 1)
        if start.shape[0] != n_features:
            raise DataError(f"starting_vector has {start.shape[0]} values for {n_features} features")
        self.beta = tf.Variable(start, dtype=DTYPE, name="beta")
        self.feature_names = feature_names or [f"x{i}" for i in range(n_features)]
        self._X: np.ndarray | None = None
        self._y: np.ndarray | None = None
        self._weights: np.ndarray | None = None
        self._offset: np.ndarray | None = None
        self.result_: dict | None = None
        self.history: list[float] = []

    @classmethod
    def from_formula(cls, formula: str, data, *, weights=None, offset=None, missing: str = "raise",
                     **kwargs) -> "LinearRegression":
        """Build X, y, prior ``weights`` and ``offset`` (column names or arrays; ``offset(expr)`` in the formula
        too) from a formula such as ``"y ~ x1 + x2"`` and keep them for :meth:`fit`."""
        from .design import build_design

        design = build_design(formula, data, weights=weights, offset=offset, missing=missing)
        if design.terms:
            raise DataError("LinearRegression takes fixed effects only; use tfmixed.lmer for (x | g) terms")
        model = cls(design.n_fixed, feature_names=design.fixed_names, **kwargs)
        model._X, model._y = design.X, design.y.reshape(-1, 1)
        model._weights, model._offset = design.weights, design.offset
        return model

    def predict(self, X, offset=None) -> tf.Tensor:
        """X beta (+ offset) as an (n, 1) tensor."""
        X = tf.constant(as_matrix(X), dtype=DTYPE) if not isinstance(X, tf.Tensor) else X
        prediction = tf.matmul(X, self.beta)
        if offset is not None:
            prediction += tf.constant(as_response(offset, int(X.shape[0]), "offset"), dtype=DTYPE)
        return prediction

    def _weighting(self, n: int, weights, offset, from_formula: bool):
        """sqrt(w) and o as columns; arguments override what from_formula stored."""
        weights = self._weights if weights is None and from_formula else weights
        offset = self._offset if offset is None and from_formula else offset
        w = np.ones((n, 1)) if weights is None else as_response(weights, n, "weights")
        if np.any(w < 0) or not np.any(w > 0):
            raise DataError("weights must be non-negative with at least one positive value")
        o = np.zeros((n, 1)) if offset is None else as_response(offset, n, "offset")
        return np.sqrt(w), o

    def _data(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        if X is None and y is None:
            if self._X is None or self._y is None:  # from_formula sets both
                raise NotFittedError("fit() needs X and y unless the model was built with from_formula")
            return self._X, self._y
        X = as_matrix(X)
        if X.shape[1] != self.beta.shape[0]:
            raise DataError(f"X has {X.shape[1]} columns but the model has {self.beta.shape[0]} coefficients")
        return X, as_response(y, X.shape[0])

    def _penalised_columns(self, X: np.ndarray) -> np.ndarray:
        constant = np.all(X == X[0:1, :], axis=0) & (X[0] != 0)
        return ~constant

    def fit(
        self,
        X=None,
        y=None,
        *,
        method: str = "exact",
        penalty: str | None = None,
        alpha: float = 0.0,
        optimizer=None,
        epochs: int = 1000,
        weights=None,
        offset=None,
        verbose: bool = True,
    ) -> "LinearRegression":
        """Estimate beta; ``method="exact"`` (default) or ``"gradient"`` (GradientTape + Keras optimizer).

        ``penalty`` is None, ``"ridge"`` or ``"lasso"`` with strength ``alpha`` (see the class docstring).
        ``weights`` (prior weights) and ``offset`` make it R's ``lm(weights=, offset=)``: every fit runs on
        sqrt(w) X and sqrt(w) (y - o), which is weighted least squares.
        The seed's training is ``fit(method="gradient", optimizer=tf.keras.optimizers.SGD(0.01, momentum=0.98))``.
        """
        from_formula = X is None and y is None
        X, y = self._data(X, y)
        root, o = self._weighting(X.shape[0], weights, offset, from_formula)
        X, y = X * root, (y - o) * root
        if penalty not in (None, "ridge", "lasso"):
            raise DataError(f"penalty must be None, 'ridge' or 'lasso', got {penalty!r}")
        if alpha < 0:
            raise DataError("alpha must be non-negative")
        if method == "exact":
            beta = self._exact(X, y, penalty, alpha)
            self.beta.assign(beta)
        elif method == "gradient":
            self._train(X, y, penalty, alpha, optimizer, epochs, verbose)
        else:
            raise DataError(f"method must be 'exact' or 'gradient', got {method!r}")
        self._summarise(X, y, penalised=penalty is not None and alpha > 0, root=root[:, 0])
        return self

    def _exact(self, X: np.ndarray, y: np.ndarray, penalty: str | None, alpha: float) -> np.ndarray:
        n, p = X.shape
        if penalty is None or alpha == 0:
            from .checks import aliased_columns

            aliased = aliased_columns(X)
            if aliased:
                names = [self.feature_names[j] for j in aliased]
                raise RankDeficientError(f"X is rank deficient: column(s) {names} are linear combinations of others")
            # QR of unit-norm columns: a covariate in units of 1e12 is well conditioned after scaling
            norms = np.linalg.norm(X, axis=0)
            Q, R = np.linalg.qr(X / norms)
            return np.linalg.solve(R, Q.T @ y) / norms[:, None]
        mask = self._penalised_columns(X).astype(float)
        if penalty == "ridge":
            return np.linalg.solve(X.T @ X / n + alpha * np.diag(mask), X.T @ y / n)
        return self._lasso(X, y[:, 0], alpha, mask).reshape(-1, 1)

    @staticmethod
    def _lasso(X: np.ndarray, y: np.ndarray, alpha: float, mask: np.ndarray, tol: float = 1e-12) -> np.ndarray:
        """Coordinate descent for mean((y - X beta)^2) + alpha * sum(mask * |beta|)."""
        n, p = X.shape
        beta = np.zeros(p)
        column_norms = 2.0 * np.sum(X**2, axis=0) / n
        residual = y.copy()
        for _ in range(10_000):
            largest_change = 0.0
            for j in range(p):
                rho = 2.0 * X[:, j] @ residual / n + column_norms[j] * beta[j]
                threshold = alpha * mask[j]
                new = np.sign(rho) * max(abs(rho) - threshold, 0.0) / column_norms[j]
                residual += X[:, j] * (beta[j] - new)
                largest_change = max(largest_change, abs(new - beta[j]))
                beta[j] = new
            if largest_change < tol * max(1.0, np.max(np.abs(beta))):
                break
        return beta

    def _train(self, X, y, penalty, alpha, optimizer, epochs, verbose) -> None:
        import warnings

        X_t, y_t = tf.constant(X, dtype=DTYPE), tf.constant(y, dtype=DTYPE)
        mask = tf.constant(self._penalised_columns(X).astype(float).reshape(-1, 1), dtype=DTYPE)
        optimizer = optimizer or tf.keras.optimizers.SGD(learning_rate=0.01, momentum=0.98)
        alpha_t = tf.constant(alpha, dtype=DTYPE)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(y_t - tf.matmul(X_t, self.beta)))
                if penalty == "ridge":
                    loss += alpha_t * tf.reduce_sum(tf.square(self.beta * mask))
                elif penalty == "lasso":
                    loss += alpha_t * tf.reduce_sum(tf.abs(self.beta * mask))
            gradients = tape.gradient(loss, self.trainable_variables)
            optimizer.apply_gradients(zip(gradients, self.trainable_variables))
            return loss

        progress = Progress("LinearRegression", verbose=verbose)
        self.history = []
        for epoch in range(epochs):
            self.history.append(float(step()))
            progress.update(epoch + 1, f"loss {self.history[-1]:.6g}")
        progress.finish(f"{epochs} epochs, loss {self.history[-1]:.6g}")
        if not np.isfinite(self.history[-1]) or self.history[-1] > self.history[0]:
            warnings.warn(f"gradient training diverged (loss {self.history[0]:.4g} -> {self.history[-1]:.4g}); lower the "
                          "learning rate", ConvergenceWarning, stacklevel=3)

    def _summarise(self, X: np.ndarray, y: np.ndarray, penalised: bool, root: np.ndarray) -> None:
        """X and y are the weighted ones (sqrt(w) X, sqrt(w)(y - o)); zero weights do not count as rows."""
        n, p = int(np.count_nonzero(root)), X.shape[1]
        beta = self.beta.numpy()
        residuals = (y - X @ beta)[:, 0]
        rss = float(residuals @ residuals)
        # R's weighted R^2: total sum of squares about the weighted mean of y - o
        w = root**2
        unweighted = np.divide(y[:, 0], root, out=np.zeros_like(root), where=root > 0)
        mean = float(np.sum(w * unweighted) / np.sum(w))
        tss = float(np.sum(w * (unweighted - mean) ** 2))
        if n <= p:
            import warnings

            warnings.warn(f"no residual degrees of freedom ({n} observations for {p} coefficients): sigma and the "
                          "standard errors are undefined (NaN)", TfmixedWarning, stacklevel=3)
        sigma = np.sqrt(rss / (n - p)) if n > p else np.nan
        if penalised:
            se = np.full(p, np.nan)
        elif n <= p:
            se = np.full(p, np.nan)
        else:
            se = sigma * np.sqrt(np.diag(np.linalg.inv(X.T @ X)))
        t_values = beta[:, 0] / se
        self.result_ = {
            "coef": beta[:, 0],
            "se": se,
            "t": t_values,
            "p": 2 * stats.t.sf(np.abs(t_values), n - p),
            "sigma": sigma,
            "r2": 1.0 - rss / tss if tss > 0 else np.nan,
        }

    def _result(self, key: str):
        if self.result_ is None:
            raise NotFittedError("call fit() first")
        return self.result_[key]

    @property
    def coef(self) -> pd.Series:
        """Estimated coefficients."""
        return pd.Series(self._result("coef"), index=self.feature_names, name="coef")

    @property
    def se(self) -> pd.Series:
        """Standard errors sigma * sqrt(diag((X'X)^{-1})) (NaN for penalised fits)."""
        return pd.Series(self._result("se"), index=self.feature_names, name="std err")

    @property
    def sigma(self) -> float:
        """Residual standard error sqrt(RSS / (n - p))."""
        return float(self._result("sigma"))

    @property
    def r2(self) -> float:
        """Coefficient of determination 1 - RSS / TSS, weighted, of y - o: what X explains (R 4.2's summary.lm
        counts an offset as explained variance too)."""
        return float(self._result("r2"))

    def summary(self) -> pd.DataFrame:
        """coef, std err, t and P>|t| per coefficient."""
        return pd.DataFrame(
            {"coef": self._result("coef"), "std err": self._result("se"), "t": self._result("t"), "P>|t|": self._result("p")},
            index=self.feature_names,
        )
