"""The GLMM objective: (theta, beta) -> the Laplace or adaptive Gauss-Hermite approximation of -2 log L.

The analogue of lme4's ``mkGlmerDevfun``. With u* the conditional mode (:mod:`tfmixed.estimators.pirls`) and
L L' = Lambda'Z'WZ Lambda + I at the IRLS weights of the mode, the Laplace approximation is

    -2 log L(theta, beta) ~ sum_i -2 log p(y_i | mu_i(u*)) + ||u*||^2 + log|L|^2.

For one scalar random-effects term (levels independent given beta) adaptive Gauss-Hermite quadrature with
knots z_k and standard-normal weights w_k replaces the Laplace step per level j:

    -2 log integral_j = A_j(u*_j) + log L_jj^2 - 2 log sum_k w_k exp(z_k^2 / 2 - (A_j(u*_j + z_k / L_jj) - A_j(u*_j)) / 2)

with A_j(u) = sum_{i in j} -2 log p(y_i | u) + u^2; one knot is the Laplace approximation. Unlike lme4 (its
issue #161), the quadrature value keeps the saturated model's constant, so Laplace and AGQ log-likelihoods
compare. The determinant is taken at the weights of the mode itself (lme4 takes it at the previous PIRLS
iterate, which moves its criterion by up to ~1e-5 relative).

Two criteria are minimised by the optimiser of :mod:`tfmixed.estimators.profiled`: :class:`ThetaCriterion`
(theta only, beta inside PIRLS: lme4's ``nAGQ = 0`` and the start of the others) and :class:`JointCriterion`
(theta and beta), with the analytic gradient of :meth:`GlmmObjective.gradient` where it exists.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import scipy.sparse as sp
from numpy.polynomial.hermite_e import hermegauss

from .errors import DataError, TfmixedError
from .estimators.pirls import PIRLS, Mode, WarmStart
from .families import Family
from .objective import bounded_scale
from .derivatives import hessian_of_gradient, hessian_of_values, jacobian, relative_steps
from .levels import unique_with_inverse
from .kernels.covariance import lower_indices
from .kernels.options import KernelOptions


class GlmmObjective:
    """The approximate deviance of a GLMM design and family, with warm-started conditional modes.

    >>> import tfmixed as tm
    >>> from tfmixed.families import get_family
    >>> cbpp = tm.datasets.load("cbpp")
    >>> design = tm.build_design("incidence / size ~ period + (1 | herd)", cbpp, weights="size")
    >>> objective = GlmmObjective(design, get_family("binomial"))
    >>> beta = [-1.39834286, -0.99192498, -1.12821622, -1.57974541]
    >>> round(objective.deviance([0.64206992], beta), 3)
    184.053
    """

    def __init__(self, design, family: Family, n_agq: int = 1, options: KernelOptions | None = None):
        self.design, self.family = design, family
        self.n_agq = int(n_agq)
        self.pirls = PIRLS(design, family, options)
        self.dims = self.pirls.dims
        self.covariance = self.pirls.covariance
        self.p = design.n_fixed
        self.theta_lower = self.covariance.lower
        self.n_theta = self.theta_lower.size
        self.theta_start = self.covariance.start.copy()
        if self.n_agq > 1:
            if len(self.dims) != 1 or self.dims[0] != 1 or not self.covariance.is_lme4_theta:
                raise DataError("nAGQ > 1 needs a single scalar random-effects term such as (1 | g), as in lme4; "
                                f"this model has terms with {self.dims} columns")
            knots, weights = hermegauss(self.n_agq)
            self.knots, self.knot_weights = knots, weights / np.sqrt(2 * np.pi)
        #: the family's parameters estimated with theta (on the log scale): the last entries of every parameter
        #: vector (theta, [beta,] phi) the criteria see
        self.n_family = family.n_estimated
        self._bound: dict[bytes, Family] = {}
        self._family_start: np.ndarray | None = None
        self._last: WarmStart | None = None
        self._mode_cache: tuple[tuple[bytes, bytes | None, bytes], Mode] | None = None
        self.n_pirls = 0
        self._offsets = np.cumsum([0] + [term.q for term in design.terms])[:-1]
        self._pairs = self._leverage_pairs()
        self._pair_rows = np.tile(np.arange(design.nobs), len(self._pairs[3]))  # the row of each (row, pair) product
        first = design.terms[0]
        #: sums over the rows of each level of the first term (the quadrature's per-level integrals)
        self._level_sums = sp.csr_matrix((np.ones(design.nobs), (first.codes, np.arange(design.nobs))),
                                         shape=(first.n_levels, design.nobs))

    def family_at(self, phi=None) -> Family:
        """The family with its estimated parameters at working (log) values ``phi`` (None: none estimated)."""
        if self.n_family == 0:
            return self.family
        if phi is None:
            raise DataError(f"the {self.family.name} family's parameters {self.family.estimated_names} are "
                            "estimated: give their working values")
        phi = np.asarray(phi, dtype=np.float64)
        key = phi.tobytes()
        if key not in self._bound:
            if len(self._bound) > 64:
                self._bound.clear()
            self._bound[key] = self.family.with_working(phi)
        return self._bound[key]

    def family_start(self) -> np.ndarray:
        """Working (log or logit) starting values of the family's estimated parameters: the family's own where known
        (a refit's), else moment estimates at the means of the joint PIRLS mode at theta's start with a
        provisional value of 1."""
        if self._family_start is None:
            known = self.family.working_values()
            if np.all(np.isfinite(known)):
                self._family_start = known
            else:
                provisional = self.family.with_working(np.zeros(self.n_family))
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    mode = self.pirls.run(self.theta_start, None, family=provisional)
                natural = provisional.start_parameters(self.pirls.y, mode.mu, self.pirls.prior)
                self._family_start = np.where(np.isfinite(known), known, self.family.to_working(natural))
        return self._family_start.copy()

    def split(self, params) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(theta, beta or None, phi or None) of a criterion's parameter vector (theta, [beta,] phi)."""
        params = np.asarray(params, dtype=np.float64)
        n_theta, n_family = self.n_theta, self.n_family
        theta = params[:n_theta]
        phi = params[params.size - n_family:] if n_family else None
        has_beta = params.size == n_theta + self.p + n_family and (self.p > 0 or params.size > n_theta + n_family)
        beta = params[n_theta : n_theta + self.p] if has_beta else None
        return theta, beta, phi

    def mode_at(self, params) -> Mode:
        """The mode at a criterion's parameter vector (theta, [beta,] phi)."""
        theta, beta, phi = self.split(params)
        return self.mode(theta, beta, phi)

    def mode(self, theta, beta=None, phi=None) -> Mode:
        """The conditional mode at theta and beta (joint with beta when None) and the family's parameters
        ``phi`` (working values), warm-started from the last one."""
        theta = np.asarray(theta, dtype=np.float64)
        beta = None if beta is None else np.asarray(beta, dtype=np.float64)
        family = self.family_at(phi)
        key = (theta.tobytes(), None if beta is None else beta.tobytes(), b"" if phi is None else np.asarray(phi).tobytes())
        if self._mode_cache is not None and key == self._mode_cache[0]:  # the same point twice (a check, the fit)
            return self._mode_cache[1]
        # an optimiser's trial point far out can overflow the mean: the criterion is then inf, not a warning
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            mode = self.pirls.run(theta, beta, start=self._last, family=family)
        self._last, self._mode_cache = mode, (key, mode)
        self.n_pirls += 1
        return mode

    def start_from(self, theta, beta, b) -> None:
        """Start the next PIRLS run from fixed effects ``beta`` and random effects ``b`` (Z's column order), as
        a model trained elsewhere (a Keras network) already holds them near the mode."""
        theta = np.asarray(theta, dtype=np.float64)
        factors = self.covariance.factors(theta)
        pieces = []
        for term, part, T in zip(self.design.terms, np.split(np.asarray(b, dtype=np.float64), self._offsets[1:]), factors):
            pieces.append(np.linalg.lstsq(T, part.reshape(term.n_levels, term.n_cols).T, rcond=None)[0].T.ravel())
        u = np.concatenate(pieces)
        beta = np.asarray(beta, dtype=np.float64)
        eta = self.pirls.linear_predictor(beta, np.asarray(b, dtype=np.float64))
        self._last = WarmStart(theta, beta, u, np.asarray(b, dtype=np.float64), eta, self.family.link.inverse(eta))

    def laplace(self, mode: Mode) -> float:
        """sum -2 log p(y | mu) + ||u||^2 + log|L|^2 at the mode; L L' = Lambda'Z'W Z Lambda + I with W lme4's
        Fisher weights for binomial and Poisson, else the observed information (exact Laplace, glmmTMB's)."""
        family = mode.family or self.family
        minus2 = np.sum(family.minus2_loglik(self.pirls.y, mode.mu, self.pirls.prior))
        return float(minus2 + mode.u @ mode.u + self.pirls.laplace_factor(mode).logdet_L)

    def quadrature(self, mode: Mode) -> float:
        """The adaptive Gauss-Hermite approximation (one scalar term) at the mode."""
        term = self.design.terms[0]
        family = mode.family or self.family
        codes, covariate = term.codes, term.values[:, 0]
        scale = mode.theta[0]
        sd = np.sqrt(mode.factor.first.A_inv[:, 0, 0])  # 1 / L_jj
        base = mode.eta - covariate * scale * mode.u[codes]

        def per_level(u):  # (knots, levels) -> A_j without the mu-free constant: it cancels in each knot's change
            mu = family.link.inverse(base[None, :] + covariate[None, :] * scale * u[:, codes])
            minus2 = family.minus2_loglik_kernel(self.pirls.y[None, :], mu, self.pirls.prior[None, :])
            return (self._level_sums @ minus2.T).T + u**2

        at_mode = per_level(mode.u[None, :])[0]
        total = np.zeros(term.n_levels)
        for knots, weights in self._knot_chunks(len(codes)):
            change = per_level(mode.u[None, :] + knots[:, None] * sd[None, :]) - at_mode[None, :]
            total += np.sum(weights[:, None] * np.exp(knots[:, None] ** 2 / 2 - change / 2), axis=0)
        constant = np.sum(family.minus2_loglik_constant(self.pirls.y, self.pirls.prior))
        return float(np.sum(at_mode - 2 * np.log(sd) - 2 * np.log(total)) + constant)

    def value(self, mode: Mode) -> float:
        return self.quadrature(mode) if self.n_agq > 1 else self.laplace(mode)

    def deviance(self, theta, beta, phi=None) -> float:
        """The approximate -2 log-likelihood at (theta, beta) and the family's parameters ``phi``."""
        return self.value(self.mode(theta, beta, phi))

    def deviance_at(self, params) -> float:
        """The approximate -2 log-likelihood at a parameter vector (theta, beta, phi)."""
        return self.value(self.mode_at(params))

    def _leverage_pairs(self):
        """The distinct pairs of nonzero columns of Z Lambda that share a row (kernel order), and for every
        (row, pair of the row's columns) which distinct pair it is; set up once."""
        columns = []  # (term index, column a, kernel column of each row)
        for t, (term, offset) in enumerate(zip(self.design.terms, self._offsets)):
            for a in range(term.n_cols):
                columns.append((t, a, offset + term.codes * term.n_cols + a))
        q = int(sum(term.q for term in self.design.terms))
        keys = np.concatenate([c[2].astype(np.int64) * q + d[2] for c in columns for d in columns])
        unique, which = unique_with_inverse(keys)
        spec = [(c[0], c[1], d[0], d[1]) for c in columns for d in columns]
        return (*np.divmod(unique, q), which.ravel(), spec)

    @property
    def has_analytic_gradient(self) -> bool:
        """Whether :meth:`gradient` can give a closed form (Laplace, or quadrature for binomial and Poisson under
        their canonical links). lme4's determinant at Fisher weights under a non-canonical link (binomial probit,
        cloglog, cauchit; Poisson sqrt, identity) is not the Hessian the implicit function theorem needs, so
        those take central differences."""
        family = self.family
        if self.n_agq > 1:
            return family.has_closed_form_gradient
        return family.has_closed_form_gradient or not family.laplace_uses_fisher_weights

    def leverages(self, mode: Mode, factor=None) -> np.ndarray:
        """h_i = (Z Lambda H^{-1} Lambda'Z')_ii, H = Lambda'Z'WZ Lambda + I at the mode (``factor``: H's factor,
        default the mode's own)."""
        factors = self.covariance.factors(mode.theta)
        spherical = [term.values @ T for term, T in zip(self.design.terms, factors)]
        left, right, which, spec = self._pairs
        products = np.concatenate([spherical[t][:, a] * spherical[s][:, b] for t, a, s, b in spec])
        entries = (factor or mode.factor).inverse_entries(left, right)
        return np.bincount(self._pair_rows, entries[which] * products, minlength=self.design.nobs)

    def gradient(self, mode: Mode, joint: bool = False) -> np.ndarray | None:
        """Gradient of the Laplace deviance in (theta, beta, log phi) (``joint=False``: beta fixed in PIRLS) or
        in (theta, log phi) with beta in PIRLS (``joint=True``, nAGQ = 0); None where it is not available (a
        singular vector-valued term, quadrature for a family without the closed form).

        With A = sum -2 log p, a = dA/d eta, W = -d^2 log p / d eta^2 (the Laplace weights), h the leverages,
        v = h dW/d eta and s = H^{-1} Lambda'Z'v (with X in the solve when beta is in PIRLS), the implicit
        function theorem at the mode gives d/d beta = X'(a + v - W Z Lambda s) and, for element (r, c) of a term's
        T with (Z dLambda u)_i = z_ir u_(j_i)c, d/d theta = (a + v - W Z Lambda s)'(Z dLambda u) - a'(Z dLambda s)
        / 2 plus d log|H| / d theta at fixed W (the LMM kernel's log-determinant gradient). A family parameter
        adds sum_i (dA_i/d phi + h_i dW_i/d phi - 2 (Z Lambda s)_i d^2 log p_i / d eta d phi) at fixed eta.
        Binomial and Poisson under their canonical links use their closed forms (dW/d eta = W V'(mu)); other
        families take d^3 log p / d eta^3 and the derivatives in phi by row-wise central quotients.
        """
        family = mode.family or self.family
        if self.n_agq > 1 and not joint:
            return self.quadrature_gradient(mode) if family.has_closed_form_gradient else None
        if not self.has_analytic_gradient:
            return None
        y, prior = self.pirls.y, self.pirls.prior
        X = self.pirls.X if joint else self.pirls._no_fixed
        if family.has_closed_form_gradient:
            factor = mode.factor
            weights = family.working_weights(mode.mu, mode.eta, prior)
            a = -2.0 * prior * (y - mode.mu)
            h = self.leverages(mode, factor)
            ratio = family.variance_derivative(mode.mu) * h  # v / W
            # the mode's own cross-products (same rows, weights and X) with v's ratio as the response
            stats = self.pirls.pattern.with_response(factor.problem.cross_products, X, ratio, weights)
        else:
            factor = self.pirls.laplace_factor(mode)
            first, second, third = family.eta_derivatives(y, mode.eta, prior)
            weights, a = -second, -2.0 * first
            h = self.leverages(mode, factor)
            ratio = np.divide(-third * h, weights, out=np.zeros_like(third), where=weights != 0)
            stats = self.pirls.pattern.compute(X, ratio, weights=weights, shift=np.zeros(X.shape[1]), signed=True)
        d_logdet = factor.logdet_gradient()
        if d_logdet is None:
            return None
        # the solve never reads r'Wr; doubling it (+1) keeps the last pivot positive when r is in X's span (in
        # place: these statistics own their xy_xy)
        stats.xy_xy[-1, -1] = 2 * stats.xy_xy[-1, -1] + 1.0
        try:
            s_beta, s_u = self.pirls.problem(stats).factorize(mode.factor.factors).solve()
        except TfmixedError:  # the observed information's system is not positive definite here (a trial point)
            return None
        s_b = self.pirls.to_b(s_u, mode.factor.factors)
        z_lambda_s = self.pirls.z_times(s_b) + X @ s_beta
        residual = a + weights * ratio - weights * z_lambda_s
        theta_part = []
        for term, offset in zip(self.design.terms, self._offsets):
            U = mode.u[offset : offset + term.q].reshape(term.n_levels, term.n_cols)
            S = s_u[offset : offset + term.q].reshape(term.n_levels, term.n_cols)
            for r, c in zip(*lower_indices(term.n_cols)):
                z_du = term.values[:, r] * U[term.codes, c]
                z_ds = term.values[:, r] * S[term.codes, c]
                theta_part.append(residual @ z_du - 0.5 * (a @ z_ds))
        chained = self.covariance.chain(np.asarray(theta_part) + d_logdet, mode.theta)
        parts = [chained] if joint else [chained, self.pirls.X.T @ residual]
        if self.n_family:
            parts.append(self._family_gradient(family, mode, h, z_lambda_s))
        return np.concatenate(parts)

    def _family_gradient(self, family: Family, mode: Mode, h: np.ndarray, z_lambda_s: np.ndarray) -> np.ndarray:
        """d criterion / d log phi at the mode: sum_i (-2 d log p_i - h_i d(d^2 log p_i / d eta^2)
        + (Z Lambda s)_i d(d log p_i / d eta)), each d in log phi at fixed eta (see :meth:`gradient`)."""
        y, prior = self.pirls.y, self.pirls.prior
        return np.array([float(np.sum(-2.0 * d_log_p - h * d_second + z_lambda_s * d_first))
                         for d_log_p, d_first, d_second in family.parameter_derivatives(y, mode.eta, prior)])

    def quadrature_gradient(self, mode: Mode) -> np.ndarray:
        """Gradient of the quadrature criterion in (theta, beta) for a canonical link.

        Per level j, D_j = -2 log(s_j sum_k w_k exp(z_k^2 / 2 - A_j(u_j + z_k s_j) / 2)) with the mode u_j and
        s_j = (1 + theta^2 Q_j)^(-1/2), Q_j = sum_i W_i x_i^2 (x: the term's covariate). Differentiating through
        the knots needs du_j (implicit: A_j'(u_j) = 0, A_j'' = 2 / s_j^2) and ds_j (W changes with eta at the
        mode): dD_j = -2 ds_j / s_j + sum_k E_jk dA_j(u_jk) / sum_k E_jk, E_jk the knot's term.
        """
        term = self.design.terms[0]
        codes, z = term.codes, term.values[:, 0]
        family, y, prior, X = self.family, self.pirls.y, self.pirls.prior, self.pirls.X
        theta, u = mode.theta[0], mode.u
        by_level = self._level_sums
        weights = family.working_weights(mode.mu, mode.eta, prior)
        Q = np.bincount(codes, weights * z**2, minlength=term.n_levels)
        s = 1.0 / np.sqrt(1.0 + theta**2 * Q)
        curvature = 2.0 / s**2
        du_beta = -(2 * theta * (by_level @ ((weights * z)[:, None] * X))) / curvature[:, None]
        du_theta = -(np.bincount(codes, -2.0 * prior * (y - mode.mu) * z, minlength=term.n_levels)
                     + 2 * theta * u * Q) / curvature
        d_weights = weights * family.variance_derivative(mode.mu) * z**2
        ds_beta = -0.5 * s[:, None] ** 3 * theta**2 * (by_level @ (d_weights[:, None] * (X + theta * z[:, None] * du_beta[codes])))
        dQ_theta = np.bincount(codes, d_weights * (z * u[codes] + theta * z * du_theta[codes]), minlength=term.n_levels)
        ds_theta = -0.5 * s**3 * (2 * theta * Q + theta**2 * dQ_theta)
        base = mode.eta - theta * z * u[codes]
        # the mu-free constant of -2 log p cancels in A - at_mode
        at_mode = np.bincount(codes, family.minus2_loglik_kernel(y, mode.mu, prior), minlength=term.n_levels) + u**2
        total, level_slope, level_slope_knot = (np.zeros(term.n_levels) for _ in range(3))
        row_beta, row_theta = np.zeros(len(y)), np.zeros(len(y))
        for knots, knot_weights in self._knot_chunks(len(y)):
            u_k = u[None, :] + knots[:, None] * s[None, :]                       # (knots, levels)
            mu = family.link.inverse(base[None, :] + theta * z[None, :] * u_k[:, codes])
            a = -2.0 * prior[None, :] * (y[None, :] - mu)                        # (knots, rows)
            A = (by_level @ family.minus2_loglik_kernel(y[None, :], mu, prior[None, :]).T).T + u_k**2
            # each level's terms relative to its mode keep the exponentials in range
            E = knot_weights[:, None] * np.exp(knots[:, None] ** 2 / 2 - (A - at_mode[None, :]) / 2)
            slope = theta * (by_level @ (a * z[None, :]).T).T + 2 * u_k
            total += E.sum(axis=0)
            level_slope += np.sum(E * slope, axis=0)
            level_slope_knot += np.sum(E * slope * knots[:, None], axis=0)
            row_beta += np.sum(E[:, codes] * a, axis=0)
            row_theta += np.sum(E[:, codes] * a * u_k[:, codes], axis=0) * z
        # sum over knots of E (Z' a X-part, slope (du + knot ds)), gathered per level
        sum_beta = (by_level @ (row_beta[:, None] * X) + level_slope[:, None] * du_beta
                    + level_slope_knot[:, None] * ds_beta)
        sum_theta = by_level @ row_theta + level_slope * du_theta + level_slope_knot * ds_theta
        d_theta = np.sum(-2 * ds_theta / s + sum_theta / total)
        d_beta = np.sum(-2 * ds_beta / s[:, None] + sum_beta / total[:, None], axis=0)
        return np.concatenate([[d_theta], d_beta])

    def _knot_chunks(self, rows: int, entries: int = 4_000_000):
        """The quadrature's (knots, weights) in chunks of at most ``entries`` knot x row values."""
        per_chunk = max(1, entries // max(rows, 1))
        for start in range(0, len(self.knots), per_chunk):
            yield self.knots[start : start + per_chunk], self.knot_weights[start : start + per_chunk]

    def hessian(self, params: np.ndarray, scales: np.ndarray, analytic: bool, fraction: float = 0.05) -> np.ndarray:
        """Hessian of the deviance in (theta, beta): with ``analytic`` (the gradient exists at ``params``),
        central differences of the analytic gradient with steps 1e-4 ``scales``, else second differences of the
        deviance with steps ``fraction`` times ``scales`` (approximate standard errors, refined once from the
        diagonal: small against the curvature's scale, large against the rounding of the criterion)."""
        params = np.asarray(params, dtype=np.float64)

        def mode_at(shift):
            return self.mode_at(params + shift)

        if analytic:  # the gradient exists at params, so next to it too
            return hessian_of_gradient(lambda point: cast(np.ndarray, self.gradient(mode_at(point - params))), params,
                                       1e-4 * np.asarray(scales, dtype=np.float64))
        return self._second_differences(params, scales, fraction)

    def _second_differences(self, params, scales, fraction):
        def at(shift):
            return self.deviance_at(params + shift)

        center = at(np.zeros_like(params))
        eye = np.eye(params.size)
        steps = fraction * np.asarray(scales, dtype=np.float64)
        # a first pass of the diagonal refines the steps to the curvature's scale
        diagonal = np.array([(at(h * e) - 2 * center + at(-h * e)) / h**2 for h, e in zip(steps, eye)])
        positive = diagonal > 0
        steps[positive] = fraction * np.sqrt(2.0 / diagonal[positive])
        return hessian_of_values(lambda point: at(point - params), params, steps)

    def is_singular(self, theta: np.ndarray, tol: float = 1e-4) -> bool:
        """lme4's ``isSingular``, per structure (:meth:`CovarianceParameters.is_singular`)."""
        return self.covariance.is_singular(theta, tol)


class _Criterion:
    """A criterion for the optimiser of :mod:`tfmixed.estimators.profiled`: the value at a mode, and its
    analytic gradient where :meth:`GlmmObjective.gradient` has one, else central differences (PIRLS runs to
    convergence, so evaluations are exact to rounding)."""

    step = 1e-5
    #: capabilities the estimators read: no average information and no evidence update for a GLMM criterion
    has_average_information = False
    has_evidence_step = False
    objective: GlmmObjective
    lower: np.ndarray
    start: np.ndarray

    # each criterion's own: the mode at a parameter vector, the criterion's value there and its analytic gradient
    def mode_at(self, params) -> Mode:  # pragma: no cover
        raise NotImplementedError

    def value_at(self, mode: Mode) -> float:  # pragma: no cover
        raise NotImplementedError

    def analytic_gradient(self, mode: Mode) -> np.ndarray | None:  # pragma: no cover
        raise NotImplementedError

    def correlation_probes(self, params: np.ndarray, distances) -> list[np.ndarray]:
        """Points with a correlation at its bound moved inside; beta (where optimised) unchanged."""
        n_theta = self.objective.n_theta
        return [np.concatenate([probe, params[n_theta:]])
                for probe in self.objective.covariance.correlation_probes(params[:n_theta], distances)]

    def even_parameters(self) -> np.ndarray:
        """The covariance parameters' evenness (see CovarianceStructure.even); beta's entries are not even."""
        even = self.objective.covariance.even()
        return np.concatenate([even, np.zeros(self.lower.size - even.size, dtype=bool)])

    def __call__(self, params) -> float:
        try:
            value = self.value_at(self.mode_at(np.asarray(params, dtype=np.float64)))
        except (TfmixedError, np.linalg.LinAlgError, FloatingPointError):
            return np.inf
        return value if np.isfinite(value) else np.inf

    def value_and_gradient(self, params):
        params = np.asarray(params, dtype=np.float64)
        try:
            mode = self.mode_at(params)
            value = self.value_at(mode)
        except (TfmixedError, np.linalg.LinAlgError, FloatingPointError):
            return np.inf, np.zeros_like(params)
        if not np.isfinite(value):
            return np.inf, np.zeros_like(params)
        gradient = self.analytic_gradient(mode)
        if gradient is None and self.objective.has_analytic_gradient:
            gradient = self._gradient_inside(params)
        if gradient is not None:
            return value, gradient
        gradient = jacobian(self, params, relative_steps(params, self.step))
        self(params)  # the centre's mode stays the warm start of the next evaluation
        return value, gradient

    #: how far inside the boundary the gradient of a singular relative covariance factor is taken
    inside_step = 1e-7

    def _gradient_inside(self, params):
        """The gradient where a vector-valued term's T is singular (a diagonal element on its bound 0, where the
        closed form needs T^{-1}): the criterion depends on T T' only and is smooth there, so the gradient at a
        point ``inside_step`` inside (error of that order) replaces the 2 n PIRLS runs of central differences
        that an optimiser's trial point on the boundary would otherwise cost. None if the gradient is still
        unavailable there."""
        lower = self.lower
        on_bound = np.isfinite(lower) & (params <= lower)
        if not np.any(on_bound):
            return None
        inside = params.copy()
        inside[on_bound] = lower[on_bound] + self.inside_step * bounded_scale(params, lower)
        try:
            return self.analytic_gradient(self.mode_at(inside))
        except (TfmixedError, np.linalg.LinAlgError, FloatingPointError):
            return None

    def is_degenerate(self, params) -> bool:
        return False

    def diagnose(self, params) -> str:
        try:
            self.mode_at(np.asarray(params, dtype=np.float64))
        except TfmixedError as error:
            return str(error)
        return "the approximate deviance overflows (check the response and the scale of the covariates)"


class ThetaCriterion(_Criterion):
    """theta -> approximate deviance with beta estimated inside PIRLS (lme4's nAGQ = 0)."""

    label = "GLMM nAGQ=0"

    def __init__(self, objective: GlmmObjective):
        self.objective = objective
        self.lower = np.concatenate([objective.theta_lower, np.full(objective.n_family, -np.inf)])
        self.start = np.concatenate([objective.theta_start, objective.family_start() if objective.n_family else []])

    def mode_at(self, params) -> Mode:
        n_theta = self.objective.n_theta
        return self.objective.mode(params[:n_theta], None, params[n_theta:] if self.objective.n_family else None)

    def value_at(self, mode: Mode) -> float:
        return self.objective.laplace(mode)

    def analytic_gradient(self, mode: Mode):
        return self.objective.gradient(mode, joint=True)


class JointCriterion(_Criterion):
    """(theta, beta) -> the Laplace or quadrature deviance."""

    def __init__(self, objective: GlmmObjective, start: np.ndarray):
        self.objective = objective
        self.label = "GLMM Laplace" if objective.n_agq == 1 else f"GLMM nAGQ={objective.n_agq}"
        self.lower = np.concatenate([objective.theta_lower, np.full(objective.p + objective.n_family, -np.inf)])
        self.start = np.asarray(start, dtype=np.float64)

    def mode_at(self, params) -> Mode:
        n_theta, p = self.objective.n_theta, self.objective.p
        phi = params[n_theta + p:] if self.objective.n_family else None
        return self.objective.mode(params[:n_theta], params[n_theta : n_theta + p], phi)

    def value_at(self, mode: Mode) -> float:
        return self.objective.value(mode)

    def analytic_gradient(self, mode: Mode):
        return self.objective.gradient(mode)
