"""The iterative (matrix-free) strategy: the mixed-model system solved by preconditioned conjugate gradients
and its log-determinant estimated by stochastic Lanczos quadrature, in TensorFlow (CPU, or a GPU when TensorFlow
sees one). Nothing of size q^2 is formed: where the exact kernel would need a dense Schur block that does not
fit in memory, this one needs the sparse Z'WZ of the cross-products and O(q (p + probes)) vectors.

For theta, with M = Lambda'Z'WZ Lambda + I and B = Lambda'Z'W [X | y~]:

* M U = B by conjugate gradients preconditioned by P, the block diagonal of M (one k x k block per level and
  term, factored exactly); then S = [X y~]'W[X y~] - B'U = L L' gives R_X (its leading p x p block), beta, and
  the penalised RSS r^2 (its last pivot squared);
* log|M| = log|P| + log|P^{-1/2} M P^{-1/2}|, the remainder by stochastic Lanczos quadrature (Ubaru, Chen and
  Saad 2017): for fixed Rademacher probes z_i, z'log(K)z ~ |z|^2 sum_j tau_j^2 log(lambda_j) from a fixed number
  of Lanczos steps. The probes are drawn once from ``seed``, so the criterion is a smooth, deterministic function
  of theta; the preconditioner takes the exact part of the determinant, so the stochastic remainder is small.

The criterion has no analytic gradient here: the estimator is derivative-free (COBYQA).
Conditional variances of the random effects are not available from this strategy (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..cross_products import CrossProducts
from ..errors import ConvergenceWarning, TfmixedError
from .covariance import lambda_times
from .criterion import ProfiledCriterion
from .pls import BlockShape


@dataclass(frozen=True)
class IterativeOptions:
    """Accuracy controls: ``probes`` Rademacher vectors and ``lanczos_steps`` steps for the log-determinant,
    conjugate gradients to relative residual ``cg_tol`` (at most ``cg_max_iter`` iterations), probes from
    ``seed``."""

    probes: int = 64
    lanczos_steps: int = 50
    cg_tol: float = 1e-10
    cg_max_iter: int = 2000
    seed: int = 20261201

    def describe(self) -> str:
        return (f"iterative: PCG to {self.cg_tol:g}, log-determinant by stochastic Lanczos quadrature "
                f"({self.probes} probes, {self.lanczos_steps} steps, seed {self.seed})")


class IterativeProblem:
    """The penalised system of one set of cross-products as a TensorFlow operator.

    >>> import numpy as np
    >>> from tfmixed.terms import RandomEffectsTerm
    >>> codes = np.repeat(np.arange(8), 5)
    >>> y = np.random.default_rng(0).normal(size=40) + codes
    >>> stats = CrossProducts.from_rows(np.ones((40, 1)), y, [RandomEffectsTerm.intercept(codes, 8)])
    >>> round(IterativeProblem(stats).factorize([np.array([[1.0]])]).pwrss, 6) > 0
    True
    """

    strategy = "iterative"

    def __init__(self, cross_products: CrossProducts, options: IterativeOptions | None = None):
        from .._tf import tf

        self.tf = tf
        self.options = options or IterativeOptions()
        self.cross_products = cp = cross_products
        self.terms = [BlockShape(levels, cols) for levels, cols in cp.dims]
        self.dims = [t.n_cols for t in self.terms]
        self.n, self.p, self.q = cp.n, cp.p, cp.q
        self.q_rest = cp.q_rest
        ZWZ = cp.z_gram(format="coo")
        self._zwz = tf.sparse.reorder(tf.sparse.SparseTensor(
            np.column_stack([ZWZ.row, ZWZ.col]).astype(np.int64), ZWZ.data.astype(np.float64), ZWZ.shape))
        self._zw_xy = np.ascontiguousarray(cp.xy_z().T)  # q x (p + 1)
        self._diagonal_blocks = self._blocks_of(ZWZ.tocsr())
        rng = np.random.default_rng(self.options.seed)
        self._probes = rng.choice([-1.0, 1.0], size=(self.q, self.options.probes))
        self._compile()

    def _compile(self):
        """The per-iteration work as tf.functions of (tensors, factor tensors): one call per CG or Lanczos step
        instead of dozens of eager operations (traced once per problem; theta enters as tensors)."""
        tf = self.tf
        matrix = tf.TensorSpec([None, None], tf.float64)
        factor_specs = [tf.TensorSpec([k, k], tf.float64) for k in self.dims]
        chol_specs = [tf.TensorSpec([t.n_levels, t.n_cols, t.n_cols], tf.float64) for t in self.terms]

        @tf.function(input_signature=[matrix, matrix, matrix, tf.TensorSpec([None], tf.float64), factor_specs, chol_specs])
        def cg_step(X, R, D, rz, factors, chol):
            MD = self._apply(D, factors)
            alpha = rz / tf.maximum(tf.reduce_sum(D * MD, axis=0), 1e-300)
            X = X + D * alpha
            R = R - MD * alpha
            Z = self._per_term(R, chol, lambda L, b: tf.linalg.cholesky_solve(L, b))
            rz_new = tf.reduce_sum(R * Z, axis=0)
            D = Z + D * (rz_new / tf.maximum(rz, 1e-300))
            return X, R, D, rz_new, tf.norm(R, axis=0)

        steps = min(self.options.lanczos_steps, self.q)

        @tf.function(input_signature=[matrix, factor_specs, chol_specs])
        def lanczos(Q, factors, chol):
            """``steps`` Lanczos steps of L_P^{-1} M L_P^{-T} from the columns of Q (unit vectors), all probes at
            once: the diagonals (alphas) and off-diagonals (betas) of their tridiagonal matrices."""
            Q_previous, beta = tf.zeros_like(Q), tf.zeros(tf.shape(Q)[1:], tf.float64)
            alphas, betas = [], []
            for _ in range(steps):
                upper = self._per_term(Q, chol, lambda L, b: tf.linalg.triangular_solve(L, b, lower=True, adjoint=True))
                W = self._per_term(self._apply(upper, factors), chol,
                                   lambda L, b: tf.linalg.triangular_solve(L, b, lower=True)) - Q_previous * beta
                alpha = tf.reduce_sum(Q * W, axis=0)
                W = W - Q * alpha
                beta = tf.norm(W, axis=0)
                alphas.append(alpha)
                betas.append(beta)
                Q_previous, Q = Q, W / tf.maximum(beta, 1e-300)
            return tf.stack(alphas), tf.stack(betas)

        @tf.function(input_signature=[matrix, chol_specs])
        def precondition(V, chol):
            return self._per_term(V, chol, lambda L, b: tf.linalg.cholesky_solve(L, b))

        self.cg_step, self.lanczos, self.precondition = cg_step, lanczos, precondition

    def _per_term(self, V, chol, solve):
        tf = self.tf
        pieces, start = [], 0
        for term, L in zip(self.terms, chol):
            block = tf.reshape(V[start : start + term.q], (term.n_levels, term.n_cols, -1))
            pieces.append(tf.reshape(solve(L, block), (term.q, -1)))
            start += term.q
        return tf.concat(pieces, axis=0)

    def _blocks_of(self, ZWZ: sp.csr_matrix) -> list[np.ndarray]:
        """The k x k diagonal blocks of Z'WZ per level of each term (the preconditioner's)."""
        blocks, start = [], 0
        for term in self.terms:
            k, levels = term.n_cols, term.n_levels
            piece = np.zeros((levels, k, k))
            for a in range(k):
                for b in range(k):
                    rows = start + np.arange(levels) * k + a
                    cols = start + np.arange(levels) * k + b
                    piece[:, a, b] = np.asarray(ZWZ[rows, cols]).ravel()
            blocks.append(piece)
            start += term.q
        return blocks

    def factorize(self, factors: list[np.ndarray]) -> "IterativeFactor":
        return IterativeFactor(self, [np.asarray(T, dtype=np.float64) for T in factors])

    # -- the operator ----------------------------------------------------------------------------------------
    def lambda_apply(self, V, factors, transpose: bool = False):
        """Lambda V (or Lambda' V) for a q x m tensor, term by term (``factors``: tensors T_t)."""
        tf = self.tf
        pieces, start = [], 0
        for term, T in zip(self.terms, factors):
            block = tf.reshape(V[start : start + term.q], (term.n_levels, term.n_cols, -1))
            pieces.append(tf.reshape(tf.einsum("ba,lbm->lam" if transpose else "ab,lbm->lam", T, block), (term.q, -1)))
            start += term.q
        return tf.concat(pieces, axis=0)

    def _apply(self, V, factors):
        """M V = Lambda'Z'WZ Lambda V + V."""
        inner = self.tf.sparse.sparse_dense_matmul(self._zwz, self.lambda_apply(V, factors))
        return self.lambda_apply(inner, factors, transpose=True) + V


class _Preconditioner:
    """P = blockdiag(T' D_j T + I): exact Cholesky factors per level and term (as tensors) and log|P|."""

    def __init__(self, problem: IterativeProblem, factors):
        tf = problem.tf
        self.chol, self.logdet = [], 0.0
        for term, T, D in zip(problem.terms, factors, problem._diagonal_blocks):
            A = T.T[None] @ D @ T[None] + np.eye(term.n_cols)[None]
            L = np.linalg.cholesky(A)
            self.logdet += float(2.0 * np.sum(np.log(np.diagonal(L, axis1=1, axis2=2))))
            self.chol.append(tf.constant(L, dtype=tf.float64))


class IterativeFactor(ProfiledCriterion):
    """The quantities of the profiled criterion at one theta, by PCG and stochastic Lanczos quadrature."""

    def __init__(self, problem: IterativeProblem, factors: list[np.ndarray]):
        self.problem, self.factors = problem, factors
        tf = problem.tf
        self._tensors = [tf.constant(T, dtype=tf.float64) for T in factors]
        self._preconditioner = _Preconditioner(problem, factors)
        B = problem.lambda_apply(tf.constant(problem._zw_xy), self._tensors, transpose=True)
        U, self.cg_iterations = self._conjugate_gradients(B)
        cp = problem.cross_products
        S = cp.xy_xy - (tf.transpose(B) @ U).numpy()
        S = (S + S.T) / 2
        try:
            self._L = np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            raise TfmixedError("the penalised least-squares system is not positive definite (iterative strategy); the "
                               "fixed-effects model matrix may be rank deficient given the random effects") from None
        self._U = U.numpy()
        self.logdet_L = self._logdet()

    # -- solves ----------------------------------------------------------------------------------------------
    def _conjugate_gradients(self, B):
        """M U = B column by column (vectorised), preconditioned by P; stops at relative residual cg_tol."""
        tf, problem = self.problem.tf, self.problem
        options, chol = problem.options, self._preconditioner.chol
        X, R = tf.zeros_like(B), B
        D = problem.precondition(R, chol)
        rz = tf.reduce_sum(R * D, axis=0)
        norm_b = np.maximum(tf.norm(B, axis=0).numpy(), 1e-300)
        for iteration in range(1, options.cg_max_iter + 1):
            X, R, D, rz, residual = problem.cg_step(X, R, D, rz, self._tensors, chol)
            if float(np.max(residual.numpy() / norm_b)) < options.cg_tol:
                return X, iteration
        import warnings

        warnings.warn(f"conjugate gradients stopped after {options.cg_max_iter} iterations above the tolerance "
                      f"{options.cg_tol:g}", ConvergenceWarning, stacklevel=4)
        return X, options.cg_max_iter

    def _logdet(self) -> float:
        """log|P| + the stochastic Lanczos estimate of log|L_P^{-1} M L_P^{-T}|."""
        tf, problem = self.problem.tf, self.problem
        probes = problem._probes
        norms = np.linalg.norm(probes, axis=0)
        alphas, betas = problem.lanczos(tf.constant(probes / norms), self._tensors, self._preconditioner.chol)
        alphas, betas = alphas.numpy(), betas.numpy()[:-1]
        total = 0.0
        for i in range(probes.shape[1]):
            # an invariant subspace reached early (tiny beta) ends that probe's quadrature there
            small = np.flatnonzero(betas[:, i] < 1e-10 * max(1.0, float(np.max(np.abs(alphas[:, i])))))
            m = int(small[0]) + 1 if small.size else alphas.shape[0]
            T = np.diag(alphas[:m, i]) + np.diag(betas[: m - 1, i], 1) + np.diag(betas[: m - 1, i], -1)
            values, vectors = np.linalg.eigh(T)
            total += float(norms[i] ** 2 * np.sum(vectors[0] ** 2 * np.log(np.maximum(values, 1e-300))))
        return self._preconditioner.logdet + total / probes.shape[1]

    # -- what results read -------------------------------------------------------------------------------------
    @property
    def logdet_RX(self) -> float:
        p = self.problem.p
        return float(2.0 * np.sum(np.log(np.diag(self._L)[:p])))

    @property
    def pwrss(self) -> float:
        return float(self._L[-1, -1] ** 2)

    def vcov_beta_unscaled(self) -> np.ndarray:
        p = self.problem.p
        inverse = np.linalg.solve(self._L[:p, :p], np.eye(p)) if p else np.zeros((0, 0))
        return inverse.T @ inverse

    def solve(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.problem.p
        beta = np.linalg.solve(self._L[:p, :p].T, self._L[p, :p]) if p else np.zeros(0)
        u = self._U[:, p] - self._U[:, :p] @ beta
        return beta + self.problem.cross_products.shift, u

    def u_to_b(self, u: np.ndarray) -> np.ndarray:
        return lambda_times(u, self.factors, [term.n_levels for term in self.problem.terms])

    def inverse_diagonal_blocks(self) -> list[np.ndarray]:
        """Not available from this strategy: NaN blocks (conditional variances are reported as unknown)."""
        return [np.full((t.n_levels, t.n_cols, t.n_cols), np.nan) for t in self.problem.terms]

    def gradient_parts(self, reml: bool, singular_tol: float = 1e-9):
        return None

    def gradient(self, reml: bool, singular_tol: float = 1e-9):
        return None
