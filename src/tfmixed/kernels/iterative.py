"""The iterative (matrix-free) strategy: the mixed-model system solved by preconditioned conjugate gradients,
traces of its inverse and its log-determinant estimated stochastically, in TensorFlow (CPU, or a GPU when
TensorFlow sees one). Nothing of size q^2 is formed: where the exact kernel would need a dense Schur block that
does not fit in memory, this one needs the sparse Z'WZ of the cross-products and O(q (p + probes)) vectors.

For theta, with M = Lambda'Z'WZ Lambda + I and B = Lambda'Z'W [X | y~]:

* M U = B by conjugate gradients preconditioned by P, the block diagonal of M (one k x k block per level and
  term, factored exactly), to relative residual ``cg_tol``; then S = [X y~]'W[X y~] - B'U = L L' gives R_X (its
  leading p x p block), beta, and the penalised RSS r^2 (its last pivot squared), as in the exact kernel;
* the gradient needs, per term, the sum over levels of the diagonal blocks of M^{-1} (the quantity EM's update
  reads too): Hutchinson's estimate sum_l mean_i (M^{-1} z_i)_l z_il' from fixed Rademacher probes z_i, solved
  alongside B (to ``probe_tol``), plus the exact REML part U_X S_X^{-1} U_X'. The rest of the gradient is exact;
* log|M| = log|P| + log|P^{-1/2} M P^{-1/2}|, the remainder by stochastic Lanczos quadrature (Ubaru, Chen and
  Saad 2017) with the same probes, once at the optimum (the estimator needs only the gradient).

The probes are drawn once from ``seed``: the estimated gradient is a smooth, deterministic function of theta,
whose root the estimator (:mod:`tfmixed.estimators.stochastic_newton`) finds by Newton steps; the probes'
spread gives the Monte Carlo standard error of that root. Z'WZ is held as a TensorFlow CSR matrix (its products
are multi-threaded, unlike scipy's, faster than a SparseTensor's, and run on cuSPARSE on a GPU; docs/scale.md). Conditional variances of the random effects are not available from this strategy (NaN).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from ..cross_products import CrossProducts
from ..errors import ConvergenceWarning, DataError, TfmixedError
from .covariance import lambda_times
from .criterion import ProfiledCriterion, ProfiledGradient
from .pls import BlockShape


@dataclass(frozen=True)
class IterativeOptions:
    """Accuracy controls: ``probes`` Rademacher vectors for the traces (the gradient) and the log-determinant,
    at most ``lanczos_steps`` Lanczos steps for the latter, conjugate gradients to relative residual ``cg_tol`` for the
    system and ``probe_tol`` for the probes (at most ``cg_max_iter`` iterations), probes from ``seed``. The traces
    of the smallest terms are exact, one solve per column, up to ``exact_trace_columns`` columns in all: a factor
    with a dozen levels would otherwise carry the largest relative error."""

    probes: int = 32
    lanczos_steps: int = 50
    cg_tol: float = 1e-10
    probe_tol: float = 1e-6
    cg_max_iter: int = 2000
    seed: int = 20261201
    exact_trace_columns: int = 100

    def __post_init__(self):
        integers = (("probes", self.probes, 2), ("lanczos_steps", self.lanczos_steps, 1),
                    ("cg_max_iter", self.cg_max_iter, 1), ("exact_trace_columns", self.exact_trace_columns, 0))
        for name, value, least in integers:
            if not isinstance(value, (int, np.integer)) or value < least:
                raise DataError(f"IterativeOptions.{name} must be an integer of at least {least}, got {value!r}")
        for name, value in (("cg_tol", self.cg_tol), ("probe_tol", self.probe_tol)):
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                raise DataError(f"IterativeOptions.{name} must be a number between 0 and 1, got {value!r}")

    def describe(self) -> str:
        return (f"iterative: PCG to {self.cg_tol:g} (probes to {self.probe_tol:g}), traces and log-determinant "
                f"from {self.probes} probes (at most {self.lanczos_steps} Lanczos steps; exact traces for the smallest terms, up to "
                f"{self.exact_trace_columns} columns), seed {self.seed}")


def _sparse_product(tf, matrix: sp.csr_matrix):
    """V -> matrix @ V in TensorFlow: through a CSR matrix where this TensorFlow has one (cuSPARSE on a GPU),
    else a SparseTensor (the public API, slower on CPU). The entries go in row-major order as scipy's sorted
    CSR holds them, so TensorFlow need not sort them again (a sort that costs seconds at scale)."""
    matrix.sort_indices()
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    tensor = tf.sparse.SparseTensor(np.column_stack([rows, matrix.indices.astype(np.int64)]),
                                    matrix.data.astype(np.float64), matrix.shape)
    try:
        from tensorflow.python.ops.linalg.sparse import sparse_csr_matrix_ops as csr_ops
    except ImportError:  # an internal module: keep the public path when it moves
        return lambda V: tf.sparse.sparse_dense_matmul(tensor, V)
    csr = csr_ops.CSRSparseMatrix(tensor)
    return lambda V: csr_ops.matmul(csr, V)


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

    @property
    def strategies(self) -> dict[str, str]:
        """The matrix-free strategy and its accuracy settings (shown in a fit's ``optsum``)."""
        return {"backend": "iterative", "settings": self.options.describe()}

    def __init__(self, cross_products: CrossProducts, options: IterativeOptions | None = None):
        from .._tf import tf

        self.tf = tf
        self.options = options or IterativeOptions()
        self.cross_products = cp = cross_products
        self.terms = [BlockShape(levels, cols) for levels, cols in cp.dims]
        self.dims = [t.n_cols for t in self.terms]
        self.n, self.p, self.q = cp.n, cp.p, cp.q
        self.q_rest = cp.q_rest
        ZWZ = cp.z_gram(format="csr")
        self._zwz_times = _sparse_product(tf, ZWZ)
        self.zw_xy = np.ascontiguousarray(cp.xy_z().T)  # q x (p + 1)
        self.diagonal_blocks = self._blocks_of(ZWZ)
        del ZWZ
        rng = np.random.default_rng(self.options.seed)
        self.probes = rng.choice([-1.0, 1.0], size=(self.q, self.options.probes))
        self.exact_terms = self._exactly_traced()
        self.trace_probe_tensor = tf.constant(self._trace_probes())
        self.warm_starts: dict[str, np.ndarray] = {}  # the last solutions: starts for the next theta's CG
        self._compile()

    def _exactly_traced(self) -> list[bool]:
        """Which terms get exact traces: the smallest first, while their columns (one unit-vector solve each) stay
        within ``exact_trace_columns`` in all."""
        exact, spent = [False] * len(self.terms), 0
        for t in sorted(range(len(self.terms)), key=lambda t: self.terms[t].q):
            if spent + self.terms[t].q > self.options.exact_trace_columns:
                break
            exact[t], spent = True, spent + self.terms[t].q
        return exact

    def _trace_probes(self) -> np.ndarray:
        """The right-hand sides of the traces: the probes, zero on the exactly traced terms' rows (E zz' is then
        the identity on the other rows only, and their estimates lose the small terms' share of the variance),
        then a unit vector per row of those terms."""
        masked, units, offset = self.probes.copy(), [], 0
        for term, exact in zip(self.terms, self.exact_terms):
            if exact:
                masked[offset : offset + term.q] = 0.0
                units.append(np.eye(self.q, term.q, -offset))
            offset += term.q
        return np.concatenate([masked, *units], axis=1)

    def _compile(self):
        """The per-iteration work as tf.functions of (tensors, factor tensors): one call per CG or Lanczos step
        instead of dozens of eager operations (traced once per problem; theta enters as tensors)."""
        tf = self.tf
        matrix = tf.TensorSpec([None, None], tf.float64)
        factor_specs = [tf.TensorSpec([k, k], tf.float64) for k in self.dims]
        chol_specs = [tf.TensorSpec([t.n_levels, t.n_cols, t.n_cols], tf.float64) for t in self.terms]

        @tf.function(autograph=False, input_signature=[matrix, matrix, matrix, tf.TensorSpec([None], tf.float64), factor_specs, chol_specs])
        def cg_step(X, R, D, rz, factors, chol):
            MD = self._apply(D, factors)
            alpha = rz / tf.maximum(tf.reduce_sum(D * MD, axis=0), 1e-300)
            X = X + D * alpha
            R = R - MD * alpha
            Z = self._per_term(R, chol, lambda L, b: tf.linalg.cholesky_solve(L, b))
            rz_new = tf.reduce_sum(R * Z, axis=0)
            D = Z + D * (rz_new / tf.maximum(rz, 1e-300))
            return X, R, D, rz_new, tf.norm(R, axis=0)

        @tf.function(autograph=False, input_signature=[matrix, matrix, tf.TensorSpec([None], tf.float64), factor_specs, chol_specs])
        def lanczos_step(Q, Q_previous, beta, factors, chol):
            """One Lanczos step of L_P^{-1} M L_P^{-T} for every probe at once (columns of Q, unit vectors): the
            next vectors, and this step's diagonal (alpha) and off-diagonal (beta) of their tridiagonal matrices.
            One compiled step called per iteration: an unrolled loop would take seconds to trace."""
            upper = self._per_term(Q, chol, lambda L, b: tf.linalg.triangular_solve(L, b, lower=True, adjoint=True))
            W = self._per_term(self._apply(upper, factors), chol,
                               lambda L, b: tf.linalg.triangular_solve(L, b, lower=True)) - Q_previous * beta
            alpha = tf.reduce_sum(Q * W, axis=0)
            W = W - Q * alpha
            beta = tf.norm(W, axis=0)
            return W / tf.maximum(beta, 1e-300), alpha, beta

        @tf.function(autograph=False, input_signature=[matrix, chol_specs])
        def precondition(V, chol):
            return self._per_term(V, chol, lambda L, b: tf.linalg.cholesky_solve(L, b))

        @tf.function(autograph=False, input_signature=[matrix, factor_specs])
        def apply(V, factors):
            return self._apply(V, factors)

        self.cg_step, self.lanczos_step, self.precondition, self.apply = cg_step, lanczos_step, precondition, apply

    def _per_term(self, V, chol, solve):
        tf = self.tf
        pieces, start = [], 0
        for term, L in zip(self.terms, chol):
            block = tf.reshape(V[start : start + term.q], (term.n_levels, term.n_cols, -1))
            pieces.append(tf.reshape(solve(L, block), (term.q, -1)))
            start += term.q
        return tf.concat(pieces, axis=0)

    def _blocks_of(self, ZWZ: sp.csr_matrix) -> list[np.ndarray]:
        """The k x k diagonal blocks of Z'WZ per level of each term (the preconditioner's): entry (a, b) of level
        l's block lies on the (b - a)-th diagonal."""
        diagonals = {offset: ZWZ.diagonal(offset) for offset in {b - a for k in self.dims for a in range(k) for b in range(k)}}
        blocks, start = [], 0
        for term in self.terms:
            k, levels = term.n_cols, term.n_levels
            piece = np.zeros((levels, k, k))
            for a in range(k):
                for b in range(k):
                    rows = start + np.arange(levels) * k + a
                    diagonal = diagonals[b - a]
                    piece[:, a, b] = diagonal[rows if b >= a else rows + (b - a)]
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
        inner = self._zwz_times(self.lambda_apply(V, factors))
        return self.lambda_apply(inner, factors, transpose=True) + V

    def conjugate_gradients(self, B, tolerances: np.ndarray, factors, chol, start: np.ndarray | None = None):
        """M X = B column by column (vectorised), preconditioned by P, from ``start`` (or 0); column j stops at
        relative residual ``tolerances[j]``, and converged columns leave the iteration. Returns (X, iterations)."""
        tf, options = self.tf, self.options
        norm_b = np.maximum(tf.norm(B, axis=0).numpy(), 1e-300)
        X = tf.zeros_like(B) if start is None else tf.constant(start)
        R = B if start is None else B - self.apply(X, factors)
        D = self.precondition(R, chol)
        rz = tf.reduce_sum(R * D, axis=0)
        solution, active = np.empty(B.shape), np.arange(B.shape[1])
        for iteration in range(1, options.cg_max_iter + 1):
            X, R, D, rz, residual = self.cg_step(X, R, D, rz, factors, chol)
            done = residual.numpy() / norm_b[active] < tolerances[active]
            if done.all():
                solution[:, active] = X.numpy()
                return solution, iteration
            if done.any():
                solution[:, active[done]] = tf.boolean_mask(X, done, axis=1).numpy()
                X, R, D = (tf.boolean_mask(V, ~done, axis=1) for V in (X, R, D))
                rz, active = tf.boolean_mask(rz, ~done), active[~done]
        solution[:, active] = X.numpy()
        warnings.warn(f"conjugate gradients stopped after {options.cg_max_iter} iterations above the tolerance "
                      f"{options.cg_tol:g}", ConvergenceWarning, stacklevel=5)
        return solution, options.cg_max_iter


def _quadrature(alphas: np.ndarray, betas: np.ndarray, norms: np.ndarray) -> float:
    """Gauss quadrature of log over each probe's tridiagonal matrix (columns of ``alphas``, ``betas``)."""
    total = 0.0
    for i in range(alphas.shape[1]):
        # an invariant subspace reached early (tiny beta) ends that probe's quadrature there
        small = np.flatnonzero(betas[:, i] < 1e-10 * max(1.0, float(np.max(np.abs(alphas[:, i])))))
        m = int(small[0]) + 1 if small.size else alphas.shape[0]
        values, vectors = scipy.linalg.eigh_tridiagonal(alphas[:m, i], betas[: m - 1, i])
        total += float(norms[i] ** 2 * np.sum(vectors[0] ** 2 * np.log(np.maximum(values, 1e-300))))
    return total / alphas.shape[1]


class _Preconditioner:
    """P = blockdiag(T' D_j T + I): exact Cholesky factors per level and term (as tensors), log|P| and, per term,
    the sum over levels of P_j^{-1} (the traces' control variate)."""

    def __init__(self, problem: IterativeProblem, factors):
        tf = problem.tf
        self.chol, self.inverse_sums, self.logdet = [], [], 0.0
        for term, T, D in zip(problem.terms, factors, problem.diagonal_blocks):
            A = T.T[None] @ D @ T[None] + np.eye(term.n_cols)[None]
            L = np.linalg.cholesky(A)
            self.logdet += float(2.0 * np.sum(np.log(np.diagonal(L, axis1=1, axis2=2))))
            self.chol.append(tf.constant(L, dtype=tf.float64))
            self.inverse_sums.append(np.linalg.inv(A).sum(axis=0))


class IterativeFactor(ProfiledCriterion, ProfiledGradient):
    """The quantities of the profiled criterion at one theta, by PCG and stochastic estimates, each computed
    when first asked for: the criterion's value (log-determinant by Lanczos) costs more than the gradient."""

    #: each of its solves is a PCG run: an average information (one solve per parameter) is not offered
    has_average_information = False

    problem: IterativeProblem
    # the solutions for [X y~] and the probes, the Schur factor and log|M|: None until first asked for
    _U: np.ndarray | None
    _V: np.ndarray | None
    _L: np.ndarray | None
    _logdet: float | None

    def __init__(self, problem: IterativeProblem, factors: list[np.ndarray]):
        self.problem, self.factors = problem, factors
        tf = problem.tf
        self._tensors = [tf.constant(T, dtype=tf.float64) for T in factors]
        self._preconditioner = _Preconditioner(problem, factors)
        self._B = problem.lambda_apply(tf.constant(problem.zw_xy), self._tensors, transpose=True)
        self._U = self._V = self._L = self._logdet = None
        self.cg_iterations = 0

    # -- solves ----------------------------------------------------------------------------------------------
    def _solve(self, probes: bool) -> None:
        """U = M^{-1} B (if not yet) and, with ``probes``, V = M^{-1} Z_probes (if not yet), in one PCG run."""
        problem, tf = self.problem, self.problem.tf
        options, parts = problem.options, []
        if self._U is None:
            parts.append(("system", self._B, options.cg_tol))
        if probes and self._V is None:
            parts.append(("probes", problem.trace_probe_tensor, options.probe_tol))
        if not parts:
            return
        B = tf.concat([rhs for _, rhs, _ in parts], axis=1)
        tolerances = np.concatenate([np.full(rhs.shape[1], tol) for _, rhs, tol in parts])
        starts = [problem.warm_starts.get(name) for name, _, _ in parts]
        known = [s for s in starts if s is not None]
        start = np.concatenate(known, axis=1) if len(known) == len(starts) else None
        X, iterations = problem.conjugate_gradients(B, tolerances, self._tensors, self._preconditioner.chol, start)
        self.cg_iterations = max(self.cg_iterations, iterations)
        offset = 0
        for name, rhs, _ in parts:
            solution = X[:, offset : offset + rhs.shape[1]]
            offset += rhs.shape[1]
            problem.warm_starts[name] = solution
            if name == "system":
                self._U = solution
                self._L = self._schur_factor()
            else:
                self._V = solution

    def _schur_factor(self) -> np.ndarray:
        S = self.problem.cross_products.xy_xy - self._B.numpy().T @ self._U
        try:
            return np.linalg.cholesky((S + S.T) / 2)
        except np.linalg.LinAlgError:
            raise TfmixedError("the penalised least-squares system is not positive definite (iterative strategy); the "
                               "fixed-effects model matrix may be rank deficient given the random effects") from None

    @property
    def _system(self) -> tuple[np.ndarray, np.ndarray]:
        """(U, L): the solutions for [X y~] and the Cholesky factor of their Schur complement."""
        self._solve(probes=False)
        assert self._U is not None and self._L is not None  # set by _solve
        return self._U, self._L

    # -- the log-determinant -----------------------------------------------------------------------------------
    @property
    def logdet_L(self) -> float:
        """log|P| + the stochastic Lanczos estimate of log|L_P^{-1} M L_P^{-T}|."""
        if self._logdet is None:
            self._logdet = self._preconditioner.logdet + self._lanczos_quadrature()
        return self._logdet

    def _lanczos_quadrature(self) -> float:
        """Lanczos steps from the normalised probes until the quadrature changes by less than 1e-8 (relative)
        over 10 steps, or ``lanczos_steps``: the mean of |z|^2 e_1' log(T) e_1 over the probes."""
        tf, problem = self.problem.tf, self.problem
        norms = np.linalg.norm(problem.probes, axis=0)
        Q = tf.constant(problem.probes / norms)
        Q_previous, beta = tf.zeros_like(Q), tf.zeros(Q.shape[1:], tf.float64)
        alphas, betas = [], []
        estimate: float | None = None
        steps = min(problem.options.lanczos_steps, problem.q)
        for step in range(1, steps + 1):
            Q_next, alpha, beta = problem.lanczos_step(Q, Q_previous, beta, self._tensors, self._preconditioner.chol)
            Q_previous, Q = Q, Q_next
            alphas.append(alpha.numpy())
            betas.append(beta.numpy())
            if step % 10 == 0 or step == steps:
                previous, estimate = estimate, _quadrature(np.array(alphas), np.array(betas)[:-1], norms)
                if previous is not None and abs(estimate - previous) <= 1e-8 * max(1.0, abs(estimate)):
                    break
        assert estimate is not None  # the last step (steps >= 1) sets it
        return estimate

    # -- traces of the inverse (the gradient) -----------------------------------------------------------------
    def inverse_block_sums(self, include_fixed: bool, per_probe: bool = False) -> list[np.ndarray]:
        """Per term, the sum over levels of the k x k diagonal blocks of Omega_P^{-1} (M, or with
        ``include_fixed`` the [Z Lambda, X] system: + U_X S_X^{-1} U_X', exact): Hutchinson's estimate from the
        probes, their mean or (``per_probe``) one m x k x k array of each probe's estimate. Computed once per
        ``include_fixed`` (the gradient and its Monte Carlo covariance both read them)."""
        kept = self.__dict__.setdefault("_kept_probe_estimates", {})
        if include_fixed not in kept:
            kept[include_fixed] = self._probe_estimates_of(include_fixed)
        return kept[include_fixed] if per_probe else [estimates.mean(axis=0) for estimates in kept[include_fixed]]

    def _probe_estimates_of(self, include_fixed: bool) -> list[np.ndarray]:
        self._solve(probes=True)
        assert self._V is not None  # set by _solve
        problem, p = self.problem, self.problem.p
        U, L = self._system
        fixed_inverse = None
        if include_fixed and p:
            L_X_inv = np.linalg.solve(L[:p, :p], np.eye(p))
            fixed_inverse = L_X_inv.T @ L_X_inv
        m, units = problem.options.probes, problem.options.probes
        preconditioned = problem.precondition(problem.trace_probe_tensor[:, :m], self._preconditioner.chol).numpy()
        sums: list[np.ndarray] = []
        offset = 0
        for term, exact in zip(problem.terms, problem.exact_terms):
            rows = slice(offset, offset + term.q)
            shape = (term.n_levels, term.n_cols, -1)
            if exact:  # M^{-1} on the term's rows and columns, from the unit solves: its diagonal blocks
                inverse = self._V[rows, units : units + term.q].reshape(term.n_levels, term.n_cols, term.n_levels, term.n_cols)
                levels = np.arange(term.n_levels)
                estimates = np.broadcast_to(inverse[levels, :, levels, :].sum(axis=0), (m, term.n_cols, term.n_cols))
                units += term.q
            else:  # sum_j P_j^{-1} exactly, (M^{-1} - P^{-1}) by the probes: the within-block part of the spread goes
                remainder = (self._V[rows, :m] - preconditioned[rows]).reshape(shape)
                estimates = (np.einsum("lam,lbm->mab", remainder, problem.probes[rows].reshape(shape))
                             + self._preconditioner.inverse_sums[len(sums)][None])
            estimates = (estimates + estimates.transpose(0, 2, 1)) / 2
            if fixed_inverse is not None:
                U_X = U[rows, :p].reshape(shape)
                estimates = estimates + np.einsum("lap,pr,lbr->ab", U_X, fixed_inverse, U_X)[None]
            sums.append(estimates)
            offset += term.q
        return sums

    def gradient_covariance(self, reml: bool, singular_tol: float = 1e-9) -> np.ndarray | None:
        """Monte Carlo covariance of the estimated gradient (the probes' spread / their number); None where the
        gradient is (see :meth:`gradient_parts`)."""
        singular = self._singular_terms(singular_tol)
        if any(s and (T.shape[0] > 1 or T[0, 0] != 0.0) for T, s in zip(self.factors, singular)):
            return None
        per_probe = self.inverse_block_sums(include_fixed=reml, per_probe=True)
        gradients = np.array([self.logdet_gradient_from([sums[i] for sums in per_probe], singular)
                              for i in range(self.problem.options.probes)])
        return np.atleast_2d(np.cov(gradients, rowvar=False)) / gradients.shape[0]

    # -- what results read -------------------------------------------------------------------------------------
    @property
    def logdet_RX(self) -> float:
        p = self.problem.p
        return float(2.0 * np.sum(np.log(np.diag(self._system[1])[:p])))

    @property
    def pwrss(self) -> float:
        return float(self._system[1][-1, -1] ** 2)

    def vcov_beta_unscaled(self) -> np.ndarray:
        p, L = self.problem.p, self._system[1]
        inverse = np.linalg.solve(L[:p, :p], np.eye(p)) if p else np.zeros((0, 0))
        return inverse.T @ inverse

    def solve(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.problem.p
        U, L = self._system
        beta = np.linalg.solve(L[:p, :p].T, L[p, :p]) if p else np.zeros(0)
        u = U[:, p] - U[:, :p] @ beta
        return beta + self.problem.cross_products.shift, u

    def spherical_effects(self) -> np.ndarray:
        return self.solve()[1]

    def u_to_b(self, u: np.ndarray) -> np.ndarray:
        return lambda_times(u, self.factors, [term.n_levels for term in self.problem.terms])

    def inverse_diagonal_blocks(self) -> list[np.ndarray]:
        """Not available from this strategy: NaN blocks (conditional variances are reported as unknown)."""
        return [np.full((t.n_levels, t.n_cols, t.n_cols), np.nan) for t in self.problem.terms]
