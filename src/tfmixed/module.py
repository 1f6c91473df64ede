"""The seed's ``SleepReg``, generalised to any lme4 formula: a ``tf.Module`` holding beta and b.

Given random-effects covariances G_t and the error variance sigma^2, ``reset_variances`` re-solves

    minimise_{beta, b}  ||y - X beta - Z b||^2 / sigma^2 + sum_t sum_j b_tj' G_t^{-1} b_tj

exactly (Henderson's mixed model equations via the blocked Cholesky of :mod:`tfmixed.kernels.pls`;
singular G_t allowed) or by gradient steps with a Keras optimizer on exactly the seed's loss.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd  # noqa: F401  (DataFrames in the return annotations)

from ._tf import DTYPE, default_optimizer, tf
from .design import Design, build_design, frames_by_factor
from .errors import ConvergenceWarning, DataError, ShapeError, SingularCovarianceError
from .kernels.covariance import covariance_factor
from .lmm import problem_from_design
from .progress import Progress
from .protocols import KernelFactor
from .validation import require_unstructured


class MixedModule(tf.Module):
    """Fixed effects ``beta`` (p x 1) and random effects ``b`` (q x 1) of a linear mixed model as tf.Variables.

    >>> from tfmixed import datasets
    >>> m = MixedModule.from_formula("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"))
    >>> G = [[24.7407**2, 24.7407 * 5.9221 * 0.0656], [24.7407 * 5.9221 * 0.0656, 5.9221**2]]
    >>> m.reset_variances(G, 25.5918**2)
    >>> m.beta.numpy().ravel().round(3).tolist()
    [251.405, 10.467]
    """

    def __init__(self, design: Design, name: str | None = None):
        super().__init__(name=name)
        require_unstructured(design.terms, "the seed's MixedModule (and mackay)")
        self.design = design
        self.problem = problem_from_design(design)
        self.beta = tf.Variable(np.zeros((design.n_fixed, 1)), dtype=DTYPE, name="beta")
        self.b = tf.Variable(np.zeros((self.problem.q, 1)), dtype=DTYPE, name="b")
        self.G: list[np.ndarray] | None = None
        self.sigmasq_epsilon: float | None = None
        self._factor: KernelFactor | None = None

    @classmethod
    def from_formula(cls, formula: str, data: Any, *, missing: str = "raise") -> "MixedModule":
        """Build the design of an lme4 formula on ``data`` and wrap it in a module."""
        return cls(build_design(formula, data, missing=missing))

    # --- the seed's interface --------------------------------------------------------------------------
    @property
    def term_names(self) -> list[str]:
        return [f"{term.name}: {', '.join(term.columns)}" for term in self.design.terms]

    def _as_term_list(self, G: Any) -> list[np.ndarray]:
        terms = self.design.terms
        if isinstance(G, dict):
            unknown = set(G) - {term.name for term in terms}
            if unknown or len(G) != len(terms):
                raise ShapeError(f"G keys {sorted(G)} must name each term's grouping factor once: {[t.name for t in terms]}")
            G = [G[term.name] for term in terms]
        elif len(terms) == 1 and not (isinstance(G, (list, tuple)) and len(G) == 1 and np.ndim(G[0]) == 2):
            G = [G]
        if len(G) != len(terms):
            raise ShapeError(f"expected {len(terms)} covariance matrices (one per term: {self.term_names}), got {len(G)}")
        out = []
        for term, matrix in zip(terms, G):
            matrix = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
            if matrix.shape != (term.n_cols, term.n_cols):
                raise ShapeError(
                    f"G for term ({' + '.join(term.columns)} | {term.name}) must be {term.n_cols} x {term.n_cols}, got {matrix.shape}"
                )
            out.append(matrix)
        return out

    def reset_variances(
        self,
        G: np.ndarray | Sequence[np.ndarray] | dict,
        sigmasq_epsilon: float,
        *,
        method: str = "exact",
        optimizer=None,
        max_epochs: int = 20_000,
        tol: float = 1e-12,
        verbose: bool = True,
    ) -> None:
        """Set G (one matrix per term; a bare matrix for one-term models) and sigma^2, and re-solve beta and b.

        ``method="exact"`` solves the mixed model equations; ``"gradient"`` minimises the seed's loss
        with ``optimizer`` (a Keras optimizer; Adam by default) until the relative loss change is below ``tol``.
        """
        try:
            sigma2 = float(sigmasq_epsilon)
        except (TypeError, ValueError):
            raise DataError(f"sigmasq_epsilon must be a positive number, got {sigmasq_epsilon!r}") from None
        if not np.isfinite(sigma2) or sigma2 <= 0:
            raise DataError(f"sigmasq_epsilon must be a positive number, got {sigmasq_epsilon!r}")
        matrices = self._as_term_list(G)
        factors = [
            covariance_factor(matrix / sigma2, name=f"G for {name}") for matrix, name in zip(matrices, self.term_names)
        ]
        self.G, self.sigmasq_epsilon = matrices, sigma2
        if method == "exact":
            self._factor = factor = self.problem.factorize(factors)
            beta, u = factor.solve()
            self.beta.assign(beta.reshape(-1, 1))
            self.b.assign(factor.u_to_b(u).reshape(-1, 1))
        elif method == "gradient":
            self._factor = None
            self._gradient_solve(matrices, sigma2, optimizer, max_epochs, tol, verbose)
        else:
            raise DataError(f"method must be 'exact' or 'gradient', got {method!r}")

    def _gradient_solve(self, matrices, sigma2, optimizer, max_epochs, tol, verbose) -> None:
        for matrix, name in zip(matrices, self.term_names):
            if np.linalg.eigvalsh(matrix)[0] <= 1e-12 * max(1.0, np.max(np.abs(matrix))):
                raise SingularCovarianceError(
                    f"G for {name} is singular, so the seed's loss b' G^-1 b is undefined; use method='exact'"
                )
        optimizer = optimizer or default_optimizer("adam", 0.5)
        step = self._training_step(optimizer)
        # sigma^2 and G^-1 live in variables, so one traced step serves every call (no retracing per pass).
        self._sigma2_t.assign(sigma2)
        for variable, matrix in zip(self._precisions_t, matrices):
            variable.assign(np.linalg.inv(matrix))
        progress = Progress("MixedModule", verbose=verbose)
        # a loss that is NaN from the start (a diverging step) leaves the starting point
        previous, best = np.inf, (np.inf, (self.beta.numpy().copy(), self.b.numpy().copy()))
        for epoch in range(max_epochs):
            before = (self.beta.numpy().copy(), self.b.numpy().copy())
            loss = float(step())  # the loss at ``before``, the variables as they were before this step
            if loss < best[0]:
                best = (loss, before)
            progress.update(epoch + 1, f"loss {loss:.8g}")
            if abs(previous - loss) <= tol * max(1.0, abs(loss)):
                break
            previous = loss
        else:
            warnings.warn(f"gradient solve stopped after {max_epochs} epochs (loss {loss:.8g})", ConvergenceWarning, stacklevel=3)
        # an optimizer's steps can leave a better point behind (Adam's first steps overshoot an optimum it started
        # at): end at the best point visited
        self.beta.assign(best[1][0])
        self.b.assign(best[1][1])
        progress.finish(f"loss {best[0]:.8g}")

    def _training_step(self, optimizer):
        """The compiled gradient step for ``optimizer``, traced once per optimizer and module."""
        cache = self.__dict__.setdefault("_steps", {})
        if id(optimizer) in cache:
            return cache[id(optimizer)][1]
        if not hasattr(self, "_sigma2_t"):
            Z = self.design.Z.tocoo()
            self._Z_t = tf.sparse.reorder(
                tf.sparse.SparseTensor(np.column_stack([Z.row, Z.col]).astype(np.int64), Z.data, Z.shape)
            )
            self._X_t = tf.constant(self.design.X, dtype=DTYPE)
            self._y_t = tf.constant(self.design.y.reshape(-1, 1), dtype=DTYPE)
            self._sigma2_t = tf.Variable(1.0, dtype=DTYPE, trainable=False, name="sigma2")
            self._precisions_t = [
                tf.Variable(np.eye(term.n_cols), dtype=DTYPE, trainable=False, name="G_inverse")
                for term in self.design.terms
            ]
        slices = self.design.term_slices
        shapes = [(term.n_levels, term.n_cols) for term in self.design.terms]
        variables = [self.beta, self.b]

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = self.loss(self._X_t, self._Z_t, self._y_t, self._sigma2_t, self._precisions_t, slices, shapes)
            gradients = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(gradients, variables))
            return loss

        cache[id(optimizer)] = (optimizer, step)  # the optimizer is kept alive so its id is not reused
        return step

    def loss(self, X, Z, y, sigma2, precisions, slices, shapes) -> tf.Tensor:
        """The seed's penalised loss: SSE / sigma^2 + sum_t sum_j b_tj' G_t^{-1} b_tj."""
        prediction = tf.matmul(X, self.beta) + tf.sparse.sparse_dense_matmul(Z, self.b)
        loss = tf.reduce_sum(tf.square(y - prediction)) / sigma2
        for precision, piece, shape in zip(precisions, slices, shapes):
            block = tf.reshape(self.b[piece.start : piece.stop], shape)
            loss += tf.reduce_sum(tf.matmul(block, precision) * block)
        return loss

    def residuals(self) -> np.ndarray:
        """y - X beta - Z b (- offset) at the current estimates."""
        return self.design.residuals(self.beta.numpy()[:, 0], self.b.numpy()[:, 0])

    def estimate_sigmasq_epsilon(self) -> float:
        """MacKay's noise variance: population variance (ddof=0) of the residuals."""
        return float(np.var(self.residuals()))

    def random_effects_matrices(self) -> list[np.ndarray]:
        """Per term, the levels x columns matrix of predicted random effects."""
        b = self.b.numpy()[:, 0]
        return [b[s].reshape(t.n_levels, t.n_cols) for t, s in zip(self.design.terms, self.design.term_slices)]

    def get_rnd_effs_variance(self) -> np.ndarray | list[np.ndarray]:
        """MacKay's weight variance: population (ddof=0) covariance of each term's predicted random effects.

        A single matrix for one-term models (as in the seed), else a list with one matrix per term.
        """
        covariances = [np.atleast_2d(np.cov(matrix, rowvar=False, ddof=0)) for matrix in self.random_effects_matrices()]
        return covariances[0] if len(covariances) == 1 else covariances

    def conditional_covariances(self) -> list[np.ndarray]:
        """Per term, Cov(b_j | y) for every level (an (l, k, k) array), at the current G and sigma^2.

        Cov(b | y) = sigma^2 Lambda (Lambda'Z'Z Lambda + I)^{-1} Lambda' (diagonal blocks; beta treated as known).
        """
        if self._factor is None:
            if self.G is None:
                raise DataError("call reset_variances first")
            factors = [covariance_factor(G / self.sigmasq_epsilon) for G in self.G]
            self._factor = self.problem.factorize(factors)
        blocks = self._factor.inverse_diagonal_blocks()
        return [self.sigmasq_epsilon * T[None] @ B @ T.T[None] for T, B in zip(self._factor.factors, blocks)]

    def ranef(self) -> dict[str, pd.DataFrame]:
        """Predicted random effects per grouping factor, lme4's layout (levels x term columns)."""
        return frames_by_factor(self.design.terms, self.random_effects_matrices())
