"""Families of generalised linear (mixed) models: each is its log-density log p(y | mu, phi).

A family supplies, for the mean mu = g^{-1}(eta), prior weights w and its own parameters phi (a negative binomial's
size, a Gamma's dispersion, a beta's precision; none for binomial and Poisson):

* ``log_density(y, mu, prior)``: log p(y | mu, phi) per row, every constant included (prior weights multiply it,
  as glmmTMB's ``weights``; for the binomial they are R's trials);
* ``mu_derivatives(y, mu, prior)``: d log p / d mu and d^2 log p / d mu^2, and ``mu_information(mu, prior)``,
  the Fisher information E[-d^2 log p / d mu^2] where it has a closed form (None: the observed one is used);
* ``check_response`` and ``start_mu``; ``start_parameters`` (moment estimates) for the parameters estimated.

The base class turns these into what the conditional-mode search and the Laplace approximation read, by the chain
rule through the link (mu' = d mu / d eta, mu'' = d^2 mu / d eta^2):

    d log p / d eta = l' mu',    -d^2 log p / d eta^2 = -(l'' mu'^2 + l' mu'')     (observed information),

with step weights i(mu) mu'^2 (Fisher scoring, always positive) for PIRLS, and the observed information for the
Laplace determinant (glmmTMB's exact Laplace; the two coincide under a canonical link). Binomial and Poisson keep
lme4's Fisher weights in the determinant, so their numbers stay lme4's on every link. A family written only as its
log-density gets its derivatives from TensorFlow's autodiff (:class:`LogDensityFamily`).

Numerically stable forms come from scipy.special (expit, log_ndtr, xlogy, gammaln, digamma, polygamma); no
hand-written special functions.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy import special

from .derivatives import elementwise_central
from .errors import DataError

#: steps of the row-wise central quotients of the Laplace gradient: d^3 log p / d eta^3 (relative to eta) and
#: the parameters' derivatives (on their log scale); truncation ~1e-9 and rounding ~1e-12 relative
ETA_STEP = 1e-4
PARAMETER_STEP = 1e-4
#: |log parameter| beyond which an estimated family parameter is reported at the edge of its range (e^12 ~ 1.6e5)
PARAMETER_LIMIT = 12.0
#: the range of a parameter with no bounds (a sub-model's coefficient), optimised as itself
FREE = (-np.inf, np.inf)
#: mu is kept this far inside (0, 1) / above 0 so that logs and variances stay finite (R's binomial does the same)
_EPS = np.finfo(np.float64).eps


@dataclasses.dataclass(frozen=True)
class Link:
    """A link function g with inverse and the first two derivatives of the inverse, d mu / d eta and
    d^2 mu / d eta^2. Names as R's ``make.link``: logit, probit, cloglog, cauchit, log, identity, inverse, sqrt,
    1/mu^2.

    >>> Link("inverse").inverse(np.array([0.5])).tolist(), Link("sqrt").mu_eta2(np.array([3.0])).tolist()
    ([2.0], [2.0])
    """

    name: str

    def link(self, mu: np.ndarray) -> np.ndarray:
        """eta = g(mu)."""
        name = self.name
        if name == "logit":
            return special.logit(mu)
        if name == "probit":
            return special.ndtri(mu)
        if name == "cloglog":
            return np.log(-np.log1p(-mu))
        if name == "cauchit":
            return np.tan(np.pi * (mu - 0.5))
        if name == "identity":
            return np.asarray(mu, dtype=np.float64)
        if name == "inverse":
            return 1.0 / mu
        if name == "sqrt":
            return np.sqrt(mu)
        if name == "1/mu^2":
            return 1.0 / mu**2
        return np.log(mu)

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        """mu = g^{-1}(eta), kept strictly inside (0, 1) for the binomial links and above 0 for log."""
        name = self.name
        if name == "logit":
            return np.clip(special.expit(eta), _EPS, 1 - _EPS)
        if name == "probit":
            return np.clip(special.ndtr(eta), _EPS, 1 - _EPS)
        if name == "cloglog":
            return np.clip(-np.expm1(-np.exp(np.minimum(eta, 700.0))), _EPS, 1 - _EPS)
        if name == "cauchit":
            return np.clip(0.5 + np.arctan(eta) / np.pi, _EPS, 1 - _EPS)
        if name == "identity":
            return np.asarray(eta, dtype=np.float64)
        if name == "inverse":
            return 1.0 / eta
        if name == "sqrt":
            return eta**2
        if name == "1/mu^2":
            return 1.0 / np.sqrt(eta)
        return np.maximum(np.exp(np.minimum(eta, 700.0)), _EPS)

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        """d mu / d eta."""
        name = self.name
        if name == "logit":
            p = special.expit(eta)
            return np.maximum(p * (1 - p), _EPS)
        if name == "probit":
            return np.maximum(np.exp(-0.5 * eta**2) / np.sqrt(2 * np.pi), _EPS)
        if name == "cloglog":
            eta = np.minimum(eta, 700.0)
            return np.maximum(np.exp(eta - np.exp(eta)), _EPS)
        if name == "cauchit":
            return np.maximum(1.0 / (np.pi * (1.0 + eta**2)), _EPS)
        if name == "identity":
            return np.ones_like(eta, dtype=np.float64)
        if name == "inverse":
            return -1.0 / eta**2
        if name == "sqrt":
            return 2.0 * eta
        if name == "1/mu^2":
            return -0.5 * eta**-1.5
        return np.maximum(np.exp(np.minimum(eta, 700.0)), _EPS)

    def mu_eta2(self, eta: np.ndarray) -> np.ndarray:
        """d^2 mu / d eta^2 (the observed information's second term)."""
        name = self.name
        if name == "logit":
            p = special.expit(eta)
            return p * (1 - p) * (1 - 2 * p)
        if name == "probit":
            return -eta * np.exp(-0.5 * eta**2) / np.sqrt(2 * np.pi)
        if name == "cloglog":
            eta = np.minimum(eta, 700.0)
            return np.exp(eta - np.exp(eta)) * (1.0 - np.exp(eta))
        if name == "cauchit":
            return -2.0 * eta / (np.pi * (1.0 + eta**2) ** 2)
        if name == "identity":
            return np.zeros_like(eta, dtype=np.float64)
        if name == "inverse":
            return 2.0 / eta**3
        if name == "sqrt":
            return np.full_like(eta, 2.0, dtype=np.float64)
        if name == "1/mu^2":
            return 0.75 * eta**-2.5
        return np.exp(np.minimum(eta, 700.0))


class Family:
    """Base of the families (see the module docstring for what a family supplies).

    ``parameter_names`` are the family's own parameters; a value given to the constructor fixes it, None (the
    default) estimates it with the covariance parameters. Parameters are optimised on the log scale (their
    natural values are positive).
    """

    name = ""
    links: tuple[str, ...] = ()
    #: the canonical link, under which Fisher scoring is Newton's method (None: no link in ``links`` is)
    canonical_link: str | None = None
    #: whether the family has a dispersion (scale) parameter that an observation-level random effect would be
    #: confounded with (the safe default for a new family); binomial and Poisson have none
    has_dispersion = True
    parameter_names: tuple[str, ...] = ()
    #: how glmmTMB's summary names the parameter (e.g. "Dispersion parameter for nbinom2 family")
    parameter_label = ""
    #: whether :meth:`mu_information` is the Fisher information in closed form (False: it returns None and PIRLS
    #: takes Newton steps on the observed information)
    has_fisher_information = True
    #: glmmTMB's lines for the second and later parameters (a Tweedie power)
    more_parameter_labels: tuple[str, ...] = ()
    #: what a parameter at the edge of its range means (printed with the warning that reports it)
    parameter_limit_note = "the likelihood is flat in it there"
    #: whether a zero-inflation sub-model (glmmTMB's ``ziformula``) may wrap the family (the count families)
    zero_inflatable = False
    #: glmmTMB's dispersion model is log(first parameter) times this sign (Gamma's is log(shape) = -log(phi))
    dispersion_model_sign = 1.0
    #: the title of the sub-model table in the summary, for a family whose parameters are a sub-model's
    #: coefficients (None: the parameters are printed as glmmTMB's dispersion lines)
    sub_model_title: str | None = None
    #: whether fitted means can be pinned at a bound of the mean's range by separating covariates (0 for counts,
    #: 0 or 1 for proportions): the separation check then applies
    can_separate = False
    #: whether :meth:`GlmmObjective.gradient`'s closed form applies (binomial and Poisson under their canonical
    #: links); elsewhere the gradient comes from central differences of the exact criterion
    has_closed_form_gradient = False
    #: whether the Laplace determinant uses PIRLS's Fisher weights (lme4's binomial and Poisson) rather than the
    #: observed information (exact Laplace, glmmTMB)
    laplace_uses_fisher_weights = False

    def __init__(self, link: str | None = None, **parameters: float | None):
        link = self.links[0] if link is None else link
        if link not in self.links:
            raise DataError(f"the {self.name} family takes link {' or '.join(map(repr, self.links))}, got {link!r}")
        self.link = Link(link)
        unknown = sorted(set(parameters) - set(self.parameter_names))
        if unknown:
            raise DataError(f"the {self.name} family has parameters {list(self.parameter_names)}, got {unknown}")
        values = []
        ranges = list(self.parameter_ranges) or [None] * len(self.parameter_names)
        for name, allowed in zip(self.parameter_names, ranges):
            value = parameters.get(name)
            low, high = (0.0, np.inf) if allowed is None else allowed
            if value is not None and not (isinstance(value, (int, float, np.floating)) and low < value < high):
                what = "a positive number" if allowed is None else f"a number strictly between {low:g} and {high:g}"
                raise DataError(f"{name} of the {self.name} family must be {what}, got {value!r}")
            values.append(np.nan if value is None else float(value))
        self.parameters = np.array(values, dtype=np.float64)
        self.estimated = np.array([parameters.get(name) is None for name in self.parameter_names], dtype=bool)

    # --- the parameters ------------------------------------------------------------------------------------
    @property
    def n_estimated(self) -> int:
        """How many of the family's parameters the fit estimates."""
        return int(np.count_nonzero(self.estimated))

    @property
    def estimated_names(self) -> list[str]:
        return [name for name, free in zip(self.parameter_names, self.estimated) if free]

    #: each parameter's range: None for (0, inf), optimised as its logarithm, or (low, high), optimised as the
    #: logit of its position in that interval (a Tweedie power in (1, 2), glmmTMB's 1 + plogis(psi))
    parameter_ranges: tuple[tuple[float, float] | None, ...] = ()

    def estimated_ranges(self) -> list[tuple[float, float] | None]:
        """The range of each estimated parameter (None: positive, optimised as its log)."""
        ranges = list(self.parameter_ranges) or [None] * len(self.parameter_names)
        return [r for r, free in zip(ranges, self.estimated) if free]

    def from_working(self, working: np.ndarray) -> np.ndarray:
        """Natural values of the estimated parameters from their working values (log, a logit in a range, or
        the value itself for a coefficient of a sub-model, whose range is FREE)."""
        working = np.clip(np.asarray(working, dtype=np.float64), -700.0, 700.0)
        return np.array([np.exp(w) if r is None else w if r == FREE else r[0] + (r[1] - r[0]) * special.expit(w)
                         for w, r in zip(working, self.estimated_ranges())], dtype=np.float64)

    def natural_derivative(self, working: np.ndarray) -> np.ndarray:
        """d natural / d working per estimated parameter (the chain rule of profiles in natural units)."""
        natural = self.from_working(working)
        return np.array([v if r is None else 1.0 if r == FREE else (v - r[0]) * (r[1] - v) / (r[1] - r[0])
                         for v, r in zip(natural, self.estimated_ranges())], dtype=np.float64)

    def to_working(self, natural: np.ndarray) -> np.ndarray:
        natural = np.asarray(natural, dtype=np.float64)
        return np.array([np.log(v) if r is None else v if r == FREE else special.logit((v - r[0]) / (r[1] - r[0]))
                         for v, r in zip(natural, self.estimated_ranges())], dtype=np.float64)

    def with_working(self, working: np.ndarray) -> "Family":
        """The family with its estimated parameters set from their working values."""
        working = np.asarray(working, dtype=np.float64)
        if working.size != self.n_estimated:
            raise DataError(f"the {self.name} family estimates {self.n_estimated} parameter(s), got {working.size}")
        if working.size == 0:
            return self
        bound = self._copy()
        values = self.parameters.copy()
        values[self.estimated] = self.from_working(working)
        bound.parameters = values
        return bound

    def parameters_at_limit(self) -> list[str]:
        """The estimated parameters whose working (log) value is beyond +-PARAMETER_LIMIT: at the edge of their
        range, where the likelihood is flat (a negative binomial size going to infinity is a Poisson model)."""
        return [name for name, value, r in zip(self.estimated_names, self.working_values(), self.estimated_ranges())
                if r != FREE and abs(value) > PARAMETER_LIMIT]

    def working_values(self) -> np.ndarray:
        """The estimated parameters' working values (NaN while unknown)."""
        with np.errstate(invalid="ignore"):
            return self.to_working(self.parameters[self.estimated])

    def _copy(self) -> "Family":
        clone = object.__new__(type(self))
        clone.__dict__.update({key: value for key, value in self.__dict__.items() if not key.startswith("_cache")})
        return clone

    def parameter(self, name: str):
        """The parameter's value: a number, or one value per row where a sub-model (``dispformula``) sets it."""
        rows = self.__dict__.get("row_parameters", {})
        if name in rows:
            return rows[name]
        value = float(self.parameters[self.parameter_names.index(name)])
        if not np.isfinite(value):
            raise DataError(f"the {self.name} family's {name} is not known yet (it is estimated by the fit)")
        return value

    def start_parameters(self, y: np.ndarray, mu: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Natural starting values of the parameters (moment estimates at the means ``mu`` of a first fit)."""
        return np.zeros(0)

    @property
    def canonical(self) -> bool:
        """Whether the link is canonical (then Fisher scoring is Newton's method)."""
        return self.link.name == self.canonical_link

    def __repr__(self) -> str:
        values = "".join(f", {name}={value:.6g}" for name, value in zip(self.parameter_names, self.parameters)
                         if np.isfinite(value))
        return f"{type(self).__name__}(link={self.link.name!r}{values})"

    # --- what a family supplies ----------------------------------------------------------------------------
    def log_density(self, y, mu, prior) -> np.ndarray:  # pragma: no cover - abstract
        """log p(y | mu, phi) per row, every constant included."""
        raise NotImplementedError

    def mu_derivatives(self, y, mu, prior) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        """(d log p / d mu, d^2 log p / d mu^2) per row."""
        raise NotImplementedError

    def mu_information(self, mu, prior) -> np.ndarray | None:
        """E[-d^2 log p / d mu^2] per row, or None where it has no closed form."""
        return None

    def variance(self, mu: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Var(y | mu) for unit prior weight (with the family's parameters)."""
        raise NotImplementedError

    def variance_derivative(self, mu: np.ndarray) -> np.ndarray:
        """V'(mu); under the canonical link it is d log w / d eta, the change of the IRLS weights (read by the
        closed-form gradient of binomial and Poisson)."""
        raise DataError(f"the {self.name} family declares no closed-form gradient")

    def check_response(self, y: np.ndarray, prior: np.ndarray, response: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def start_mu(self, y: np.ndarray, prior: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- derived: what PIRLS and the Laplace approximation read --------------------------------------------
    def minus2_loglik(self, y, mu, prior) -> np.ndarray:
        """-2 log p(y | mu) per row, every constant included."""
        return self.minus2_loglik_kernel(y, mu, prior) + self.minus2_loglik_constant(y, prior)

    def minus2_loglik_kernel(self, y, mu, prior) -> np.ndarray:
        """The part of -2 log p(y | mu) that quadrature evaluates at every knot (here all of it)."""
        return -2.0 * self.log_density(y, mu, prior)

    def minus2_loglik_constant(self, y, prior) -> np.ndarray:
        """The part of -2 log p(y | mu) free of mu (0 where the kernel holds everything)."""
        return np.zeros_like(np.asarray(y, dtype=np.float64))

    def pirls_deviance(self, y, mu, prior) -> float:
        """What the conditional-mode search decreases (with ||u||^2): -2 log p, or the deviance, which differs
        from it by a constant."""
        return float(np.sum(self.minus2_loglik_kernel(y, mu, prior)))

    def deviance_residuals(self, y, mu, prior) -> np.ndarray:
        """2 (log p(y | y) - log p(y | mu)): the saturated model's mean is y."""
        saturated = self.log_density(y, self.saturated_mean(y), prior)
        return 2.0 * (saturated - self.log_density(y, mu, prior))

    def saturated_mean(self, y) -> np.ndarray:
        return np.asarray(y, dtype=np.float64)

    def working_parts(self, y, mu, eta, prior) -> tuple[np.ndarray, np.ndarray]:
        """(working residual, PIRLS weights) at the linear predictor eta: weights W = i(mu) mu'^2 (Fisher
        scoring) where the Fisher information is known, else the observed information in eta (Newton's method),
        kept positive; residual (d log p / d eta) / W, so that one weighted least-squares solve is one step."""
        mu_eta = self.link.mu_eta(eta)
        first, second = self.mu_derivatives(y, mu, prior)
        score = first * mu_eta
        information = self.mu_information(mu, prior)
        if information is not None:
            weights = information * mu_eta**2
        else:  # Newton's method: negative rows are fine while each level's sum keeps the system positive definite
            weights = -(second * mu_eta**2 + first * self.link.mu_eta2(eta))
        residual = np.divide(score, weights, out=np.zeros_like(score), where=weights != 0)
        return residual, weights

    def positive_working_parts(self, y, mu, eta, prior) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`working_parts` with every weight positive (the observed information in mu where the one in eta
        is not): the fallback step where Newton's system is not positive definite, far from the mode."""
        residual, weights = self.working_parts(y, mu, eta, prior)
        if np.all(weights > 0):
            return residual, weights
        mu_eta = self.link.mu_eta(eta)
        first, second = self.mu_derivatives(y, mu, prior)
        in_mu = -second * mu_eta**2
        weights = np.where(weights > 0, weights, np.where(in_mu > 0, in_mu, 1e-12 * np.maximum(prior, 1e-300)))
        return first * mu_eta / weights, weights

    @property
    def signed_weights(self) -> bool:
        """Whether PIRLS's weights may be negative on some rows (Newton on the observed information)."""
        return not self.has_fisher_information

    def working_weights(self, mu: np.ndarray, eta: np.ndarray, prior: np.ndarray, y=None) -> np.ndarray:
        """PIRLS weights i(mu) (d mu / d eta)^2 (``y`` is needed only where the information is observed)."""
        information = self.mu_information(mu, prior)
        if information is None:
            if y is None:
                raise DataError(f"the {self.name} family's PIRLS weights depend on the response")
            return self.positive_working_parts(y, mu, eta, prior)[1]
        return information * self.link.mu_eta(eta) ** 2

    def laplace_weights(self, y, mu, eta, prior) -> np.ndarray:
        """The weights of the Laplace determinant: -d^2 log p / d eta^2 (may be negative on some rows)."""
        first, second = self.mu_derivatives(y, mu, prior)
        mu_eta = self.link.mu_eta(eta)
        return -(second * mu_eta**2 + first * self.link.mu_eta2(eta))

    def response_mean(self, mu: np.ndarray) -> np.ndarray:
        """E[y] at the conditional model's mean mu (mu itself but for a zero-inflated family)."""
        return mu

    def sample(self, mu: np.ndarray, prior: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A response drawn at the means ``mu`` (the parametric bootstrap and ``simulate``)."""
        raise DataError(f"simulating from the {self.name} family is not available")

    # --- what the Laplace criterion's gradient reads -------------------------------------------------------
    def eta_derivatives(self, y, eta, prior) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(d, d^2, d^3) log p / d eta^n per row: the first two by the chain rule, the third by a central
        quotient of the second (each row's in its own eta; relative error ~1e-8)."""
        first, second = self._eta_first_second(y, eta, prior)
        # relative steps: an inverse link's eta is ~1e-3, and its functions vary on that scale
        third = elementwise_central(lambda e: self._eta_first_second(y, e, prior)[1], eta,
                                    ETA_STEP * np.maximum(np.abs(eta), 1e-8))
        return first, second, third

    def _eta_first_second(self, y, eta, prior) -> tuple[np.ndarray, np.ndarray]:
        mu = self.link.inverse(eta)
        l1, l2 = self.mu_derivatives(y, mu, prior)
        mu_eta = self.link.mu_eta(eta)
        return l1 * mu_eta, l2 * mu_eta**2 + l1 * self.link.mu_eta2(eta)

    def parameter_derivatives(self, y, eta, prior) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per estimated parameter, the derivatives in its working (log) value of (log p, d log p / d eta,
        d^2 log p / d eta^2) per row, by central quotients in the parameter (the rows' own values)."""
        out = []
        working = self.working_values()
        for index in range(working.size):
            def parts(shift, index=index):
                moved = working.copy()
                moved[index] += shift
                family = self.with_working(moved)
                return (family.log_density(y, family.link.inverse(eta), prior),
                        *family._eta_first_second(y, eta, prior))
            up, down = parts(PARAMETER_STEP), parts(-PARAMETER_STEP)
            out.append(tuple((a - b) / (2 * PARAMETER_STEP) for a, b in zip(up, down)))
        return out


class ExponentialDispersionFamily(Family):
    """Binomial and Poisson: no parameters of their own, lme4's IRLS weights w mu'^2 / V(mu) in the steps and in
    the Laplace determinant, and the deviance as PIRLS's criterion (lme4's ``pwrssUpdate``)."""

    has_dispersion = False
    laplace_uses_fisher_weights = True

    @property
    def has_closed_form_gradient(self) -> bool:  # type: ignore[override]
        return self.canonical

    def log_density(self, y, mu, prior):
        return -0.5 * self.minus2_loglik(y, mu, prior)

    def mu_derivatives(self, y, mu, prior):
        variance = self.variance(mu)
        return prior * (y - mu) / variance, -prior / variance - prior * (y - mu) * self.variance_derivative(mu) / variance**2

    def mu_information(self, mu, prior):
        return prior / self.variance(mu)

    def working_parts(self, y, mu, eta, prior):
        return (y - mu) / self.link.mu_eta(eta), self.working_weights(mu, eta, prior)

    def working_weights(self, mu, eta, prior, y=None):
        """IRLS weights w (d mu / d eta)^2 / V(mu)."""
        return prior * self.link.mu_eta(eta) ** 2 / self.variance(mu)

    def laplace_weights(self, y, mu, eta, prior):
        return self.working_weights(mu, eta, prior)

    def pirls_deviance(self, y, mu, prior) -> float:
        return float(np.sum(self.deviance_residuals(y, mu, prior)))

    def minus2_loglik_kernel(self, y, mu, prior) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def minus2_loglik_constant(self, y, prior) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class Binomial(ExponentialDispersionFamily):
    """Binomial responses: y a proportion of ``prior`` trials (0/1 with weight 1). Links logit, probit, cloglog,
    cauchit.

    >>> fam = Binomial()  # one success in two trials at p = 0.5: -2 log(2 * 0.25)
    >>> round(float(fam.minus2_loglik(np.array([0.5]), np.array([0.5]), np.array([2.0]))[0]), 6)
    1.386294
    """

    name = "binomial"
    links = ("logit", "probit", "cloglog", "cauchit")
    canonical_link = "logit"
    can_separate = True

    def variance(self, mu):
        return mu * (1 - mu)

    def variance_derivative(self, mu):
        return 1 - 2 * mu

    def deviance_residuals(self, y, mu, prior):
        # 2 w [y log(y / mu) + (1 - y) log((1 - y) / (1 - mu))]; xlogy makes 0 log 0 = 0
        return 2 * prior * (special.xlogy(y, y / mu) + special.xlogy(1 - y, (1 - y) / (1 - mu)))

    def minus2_loglik_kernel(self, y, mu, prior):
        """-2 [s log mu + (n - s) log(1 - mu)] for s = w y successes of n = w trials (0 without trials); with
        :meth:`minus2_loglik_constant`, -2 log dbinom(w y; w, mu)."""
        trials = np.round(prior)
        successes = np.round(prior * y)
        loglik = special.xlogy(successes, mu) + special.xlog1py(trials - successes, -mu)
        return np.where(prior > 0, -2 * loglik, 0.0)

    def minus2_loglik_constant(self, y, prior):
        trials = np.round(prior)
        successes = np.round(prior * y)
        log_choose = special.gammaln(trials + 1) - special.gammaln(successes + 1) - special.gammaln(trials - successes + 1)
        return np.where(prior > 0, -2 * log_choose, 0.0)

    def check_response(self, y, prior, response):
        if np.any((y < 0) | (y > 1)):
            bad = np.unique(y[(y < 0) | (y > 1)])[:5].tolist()
            raise DataError(f"binomial response {response!r} must be 0/1 or a proportion in [0, 1], got {bad}; "
                            "counts of successes go in cbind(successes, failures) or as a proportion with weights = trials")
        counts = y * prior
        informative = prior > 0
        if np.all(y[informative] == 0) or np.all(y[informative] == 1):
            raise DataError(f"binomial response {response!r} is {int(y[informative][0])} in every row: the likelihood has "
                            "no maximum (the intercept goes to -inf or +inf)")
        if np.any(np.abs(counts - np.round(counts)) > 1e-7 * np.maximum(prior, 1)):
            raise DataError(
                f"binomial response {response!r} times its weights is not a whole number of successes: a proportion "
                "needs weights = the number of trials (lme4 warns 'non-integer #successes'; tfmixed refuses)"
            )

    def start_mu(self, y, prior):
        # R's binomial()$initialize: mustart = (w y + 0.5) / (w + 1)
        return (prior * y + 0.5) / (prior + 1)

    def sample(self, mu, prior, rng):
        trials = np.rint(prior)
        if not np.allclose(prior, trials) or np.any(trials < 0):
            raise DataError("simulating a binomial GLMM needs whole numbers of trials as prior weights; these "
                            "weights are not counts")
        safe = np.where(trials > 0, trials, 1.0)
        return np.where(trials > 0, rng.binomial(trials.astype(np.int64), mu) / safe, 0.0)


def trigamma(x) -> np.ndarray:
    """psi'(x) for x > 0: the recurrence psi'(x) = psi'(x + 1) + 1/x^2 up to x >= 10, then the asymptotic series
    1/x + 1/(2x^2) + sum_k B_2k / x^(2k+1) to B_12 (relative error below 1e-14).

    Written here because scipy's ``polygamma(1, x)`` goes through the general Hurwitz zeta, several times
    slower than this recurrence, and the beta and NB1 families evaluate psi' at every PIRLS step; no maintained
    library offers a faster vectorised trigamma (benchmarks/RESULTS.md has the measurement).

    >>> bool(np.allclose(trigamma(np.array([1e-3, 0.5, 3.0, 40.0])), special.polygamma(1, [1e-3, 0.5, 3.0, 40.0]), rtol=1e-13))
    True
    """
    z = np.array(x, dtype=np.float64, copy=True)
    out = np.zeros_like(z)
    small = z < 10.0
    while np.any(small):
        out[small] += 1.0 / z[small] ** 2
        z[small] += 1.0
        small = z < 10.0
    inv = 1.0 / z
    inv2 = inv * inv
    series = 1 / 6 - inv2 * (1 / 30 - inv2 * (1 / 42 - inv2 * (1 / 30 - inv2 * (5 / 66 - inv2 * 691 / 2730))))
    return out + inv + inv2 / 2 + inv * inv2 * series


def _log_rising_factorial(k, y):
    """log Gamma(y + k) - log Gamma(k), stable for a large k (a negative binomial near Poisson), where the two
    log-gammas (~k log k) cancel: log Gamma(y) - log B(y, k) for y > 0 (scipy's betaln is accurate there), 0 at y = 0."""
    y = np.asarray(y, dtype=np.float64)
    positive = y > 0
    safe = np.where(positive, y, 1.0)
    return np.where(positive, special.gammaln(safe) - special.betaln(safe, k), 0.0)


def _check_counts(y, response: str, family: str) -> None:
    if np.any(y < 0):
        raise DataError(f"{family} response {response!r} has negative values (e.g. {y[y < 0][:3].tolist()})")
    if np.any(np.abs(y - np.round(y)) > 1e-7 * np.maximum(np.abs(y), 1)):
        raise DataError(f"{family} response {response!r} has non-integer values (e.g. "
                        f"{y[np.abs(y - np.round(y)) > 1e-7][:3].tolist()}); a rate needs offset(log(exposure))")


class Poisson(ExponentialDispersionFamily):
    """Poisson counts; links log (canonical), sqrt, identity.

    >>> round(float(Poisson().minus2_loglik(np.array([2.0]), np.array([2.0]), np.array([1.0]))[0]), 6)
    2.613706
    """

    name = "poisson"
    links = ("log", "sqrt", "identity")
    canonical_link = "log"
    can_separate = True
    zero_inflatable = True

    def variance(self, mu):
        return mu

    def variance_derivative(self, mu):
        return np.ones_like(mu)

    def deviance_residuals(self, y, mu, prior):
        return 2 * prior * (special.xlogy(y, y / mu) - (y - mu))

    def minus2_loglik_kernel(self, y, mu, prior):
        return -2 * prior * (special.xlogy(y, mu) - mu)

    def minus2_loglik_constant(self, y, prior):
        return 2 * prior * special.gammaln(y + 1)

    def check_response(self, y, prior, response):
        if np.all(y[prior > 0] == 0):
            raise DataError(f"poisson response {response!r} is 0 in every row: the likelihood has no maximum "
                            "(the log mean goes to -inf)")
        _check_counts(y, response, "poisson")

    def start_mu(self, y, prior):
        return y + 0.1

    def sample(self, mu, prior, rng):
        if not np.all(prior == 1):
            raise DataError("simulating a Poisson GLMM with prior weights is not defined (lme4 refuses it too)")
        return rng.poisson(mu).astype(np.float64)


class _NegativeBinomialCounts(Family):
    """What NB2 and NB1 share: their links, the count checks and starting means, separation and zero-inflation."""

    links = ("log", "sqrt", "identity")
    can_separate = True
    zero_inflatable = True

    def check_response(self, y, prior, response):
        _check_counts(y, response, "negative binomial")
        if np.all(y[prior > 0] == 0):
            raise DataError(f"negative binomial response {response!r} is 0 in every row: the likelihood has no "
                            "maximum")

    def start_mu(self, y, prior):
        return y + 0.1


class NegativeBinomial(_NegativeBinomialCounts):
    """Negative binomial counts with Var(y) = mu + mu^2 / size (NB2: lme4's ``glmer.nb``, glmmTMB's
    ``nbinom2``); ``size`` (lme4's theta) is estimated unless given. Links log, sqrt, identity.

        log p = lgamma(y + k) - lgamma(k) - lgamma(y + 1) + k log(k / (k + mu)) + y log(mu / (k + mu)).

    >>> from scipy import stats
    >>> fam = NegativeBinomial(size=2.0)  # scipy's nbinom(n=k, p=k / (k + mu)) is the same law
    >>> bool(np.isclose(fam.log_density(np.array([3.0]), np.array([1.5]), np.ones(1))[0], stats.nbinom.logpmf(3, 2.0, 2 / 3.5)))
    True
    """

    name = "negative_binomial"
    parameter_names = ("size",)
    parameter_label = "Dispersion parameter for nbinom2 family ()"
    parameter_limit_note = "a size going to infinity is the Poisson model: the data show no overdispersion beyond the random effects"

    def __init__(self, link: str | None = None, size: float | None = None):
        super().__init__(link, size=size)

    def log_density(self, y, mu, prior):
        k = self.parameter("size")
        return prior * (_log_rising_factorial(k, y) - special.gammaln(y + 1) - k * np.log1p(mu / k)
                        + special.xlogy(y, mu) - y * np.log(k + mu))

    def mu_derivatives(self, y, mu, prior):
        k = self.parameter("size")
        return prior * (y / mu - (y + k) / (k + mu)), prior * (-y / mu**2 + (y + k) / (k + mu) ** 2)

    def mu_information(self, mu, prior):
        k = self.parameter("size")
        return prior * k / (mu * (k + mu))

    def variance(self, mu):
        return mu + mu**2 / self.parameter("size")

    def deviance_residuals(self, y, mu, prior):
        k = self.parameter("size")
        return 2 * prior * (special.xlogy(y, y / mu) - (y + k) * np.log((y + k) / (mu + k)))

    def start_parameters(self, y, mu, prior):
        # method of moments: sum (y - mu)^2 = sum mu + sum mu^2 / k
        excess = np.sum(prior * ((y - mu) ** 2 - mu))
        return np.array([np.sum(prior * mu**2) / excess if excess > 0 else 100.0])

    def sample(self, mu, prior, rng):
        k = self.parameter("size")
        return rng.negative_binomial(k, k / (k + mu)).astype(np.float64)


class NegativeBinomial1(_NegativeBinomialCounts):
    """Negative binomial counts with Var(y) = mu (1 + phi) (NB1, glmmTMB's ``nbinom1``): size mu / phi varies
    with the mean; ``dispersion`` phi is estimated unless given. Links log, sqrt, identity.

        log p = lgamma(y + mu/phi) - lgamma(mu/phi) - lgamma(y + 1) - (mu/phi) log(1 + phi) + y log(phi / (1 + phi))

    Its Fisher information has no closed form, so PIRLS takes Newton steps on the observed information.

    >>> from scipy import stats
    >>> fam = NegativeBinomial1(dispersion=0.5)   # size mu / phi = 3, p = 1 / (1 + phi)
    >>> bool(np.isclose(fam.log_density(np.array([2.0]), np.array([1.5]), np.ones(1))[0], stats.nbinom.logpmf(2, 3.0, 1 / 1.5)))
    True
    """

    name = "negative_binomial1"
    has_fisher_information = False
    parameter_names = ("dispersion",)
    parameter_label = "Dispersion parameter for nbinom1 family ()"
    parameter_limit_note = "a dispersion going to 0 is the Poisson model: the data show no overdispersion beyond the random effects"

    def __init__(self, link: str | None = None, dispersion: float | None = None):
        super().__init__(link, dispersion=dispersion)

    def log_density(self, y, mu, prior):
        phi = self.parameter("dispersion")
        size = mu / phi
        return prior * (_log_rising_factorial(size, y) - special.gammaln(y + 1)
                        - size * np.log1p(phi) + y * (np.log(phi) - np.log1p(phi)))

    def mu_derivatives(self, y, mu, prior):
        phi = self.parameter("dispersion")
        size = mu / phi
        first = (special.digamma(y + size) - special.digamma(size) - np.log1p(phi)) / phi
        second = (trigamma(y + size) - trigamma(size)) / phi**2
        return prior * first, prior * second

    def variance(self, mu):
        return mu * (1.0 + self.parameter("dispersion"))

    def saturated_mean(self, y):
        return np.maximum(np.asarray(y, dtype=np.float64), 1e-300)


    def start_parameters(self, y, mu, prior):
        # method of moments: sum (y - mu)^2 = (1 + phi) sum mu
        return np.array([max(float(np.sum(prior * (y - mu) ** 2) / np.sum(prior * mu)) - 1.0, 0.05)])

    def sample(self, mu, prior, rng):
        phi = self.parameter("dispersion")
        return rng.negative_binomial(mu / phi, 1.0 / (1.0 + phi)).astype(np.float64)


class Gamma(Family):
    """Positive responses with Var(y) = phi mu^2 (``dispersion`` phi = 1 / shape, lme4's sigma^2 and glmmTMB's
    sigma^2); links inverse (canonical), log, identity.

        log p = -log Gamma(1/phi) - (1/phi) log(phi mu) + (1/phi - 1) log y - y / (phi mu).
    """

    name = "Gamma"
    links = ("inverse", "log", "identity")
    canonical_link = "inverse"
    parameter_names = ("dispersion",)
    parameter_label = "Dispersion estimate for Gamma family (sigma^2)"
    dispersion_model_sign = -1.0

    def __init__(self, link: str | None = None, dispersion: float | None = None):
        super().__init__(link, dispersion=dispersion)

    def log_density(self, y, mu, prior):
        shape = 1.0 / self.parameter("dispersion")
        with np.errstate(invalid="ignore", divide="ignore"):
            value = -special.gammaln(shape) - shape * np.log(mu / shape) + (shape - 1) * np.log(y) - shape * y / mu
        return prior * np.where(mu > 0, value, np.nan)

    def mu_derivatives(self, y, mu, prior):
        shape = 1.0 / self.parameter("dispersion")
        return prior * shape * (y - mu) / mu**2, prior * shape * (mu - 2 * y) / mu**3

    def mu_information(self, mu, prior):
        return prior / (self.parameter("dispersion") * mu**2)

    def variance(self, mu):
        return self.parameter("dispersion") * mu**2

    def deviance_residuals(self, y, mu, prior):
        # R's Gamma()$dev.resids: the unit deviance, without the dispersion
        return -2 * prior * (np.log(y / mu) - (y - mu) / mu)

    def check_response(self, y, prior, response):
        if np.any(y <= 0):
            raise DataError(f"Gamma response {response!r} must be positive, got e.g. {y[y <= 0][:3].tolist()}")

    def start_mu(self, y, prior):
        return np.asarray(y, dtype=np.float64).copy()

    def start_parameters(self, y, mu, prior):
        return np.array([max(float(np.sum(prior * ((y - mu) / mu) ** 2) / max(np.sum(prior > 0), 1)), 1e-6)])

    def sample(self, mu, prior, rng):
        phi = self.parameter("dispersion")
        return rng.gamma(1.0 / phi, phi * mu)


class InverseGaussian(Family):
    """Positive responses with Var(y) = phi mu^3; links 1/mu^2 (canonical), log, inverse, identity.

        log p = -(1/2) log(2 pi phi y^3) - (y - mu)^2 / (2 phi mu^2 y).
    """

    name = "inverse.gaussian"
    links = ("1/mu^2", "log", "inverse", "identity")
    canonical_link = "1/mu^2"
    parameter_names = ("dispersion",)
    parameter_label = "Dispersion estimate for inverse.gaussian family (sigma^2)"

    def __init__(self, link: str | None = None, dispersion: float | None = None):
        super().__init__(link, dispersion=dispersion)

    def log_density(self, y, mu, prior):
        phi = self.parameter("dispersion")
        with np.errstate(invalid="ignore", divide="ignore"):
            value = -0.5 * np.log(2 * np.pi * phi * y**3) - (y - mu) ** 2 / (2 * phi * mu**2 * y)
        return prior * np.where(mu > 0, value, np.nan)

    def mu_derivatives(self, y, mu, prior):
        phi = self.parameter("dispersion")
        return prior * (y - mu) / (phi * mu**3), prior * (2 * mu - 3 * y) / (phi * mu**4)

    def mu_information(self, mu, prior):
        return prior / (self.parameter("dispersion") * mu**3)

    def variance(self, mu):
        return self.parameter("dispersion") * mu**3

    def deviance_residuals(self, y, mu, prior):
        return prior * (y - mu) ** 2 / (y * mu**2)

    def check_response(self, y, prior, response):
        if np.any(y <= 0):
            raise DataError(f"inverse Gaussian response {response!r} must be positive, got e.g. "
                            f"{y[y <= 0][:3].tolist()}")

    def start_mu(self, y, prior):
        return np.asarray(y, dtype=np.float64).copy()

    def start_parameters(self, y, mu, prior):
        return np.array([max(float(np.sum(prior * (y - mu) ** 2 / mu**3) / max(np.sum(prior > 0), 1)), 1e-9)])

    def sample(self, mu, prior, rng):
        return rng.wald(mu, mu / (self.parameter("dispersion") * mu))


class Gaussian(Family):
    """Normal responses with a non-identity link (log, inverse; identity is :func:`tfmixed.lmer`'s model, fitted
    here by the Laplace approximation, which is exact for it): Var(y) = sigma^2 (``dispersion``).
    """

    name = "gaussian"
    links = ("identity", "log", "inverse")
    canonical_link = "identity"
    parameter_names = ("dispersion",)
    parameter_label = "Dispersion estimate for gaussian family (sigma^2)"

    def __init__(self, link: str | None = None, dispersion: float | None = None):
        super().__init__(link, dispersion=dispersion)

    def log_density(self, y, mu, prior):
        sigma2 = self.parameter("dispersion")
        return prior * (-0.5 * np.log(2 * np.pi * sigma2) - (y - mu) ** 2 / (2 * sigma2))

    def mu_derivatives(self, y, mu, prior):
        sigma2 = self.parameter("dispersion")
        return prior * (y - mu) / sigma2, -prior / sigma2 * np.ones_like(mu)

    def mu_information(self, mu, prior):
        return prior / self.parameter("dispersion") * np.ones_like(mu)

    def variance(self, mu):
        return np.full_like(mu, self.parameter("dispersion"))

    def deviance_residuals(self, y, mu, prior):
        return prior * (y - mu) ** 2

    def check_response(self, y, prior, response):
        if self.link.name == "inverse" and np.any(y <= 0):
            raise DataError(f"gaussian response {response!r} with the inverse link must be positive")

    def start_mu(self, y, prior):
        y = np.asarray(y, dtype=np.float64)
        if self.link.name == "identity":
            return y.copy()
        return np.maximum(y, 1e-3 * max(float(np.mean(np.abs(y))), 1e-12))

    def start_parameters(self, y, mu, prior):
        return np.array([max(float(np.sum(prior * (y - mu) ** 2) / max(np.sum(prior > 0), 1)), 1e-12)])

    def sample(self, mu, prior, rng):
        return mu + np.sqrt(self.parameter("dispersion")) * rng.standard_normal(mu.size)


class Beta(Family):
    """Proportions strictly inside (0, 1) with mean mu and ``precision`` phi (glmmTMB's ``beta_family``): y ~
    Beta(mu phi, (1 - mu) phi), Var(y) = mu (1 - mu) / (1 + phi); links logit, probit, cloglog, cauchit.
    """

    name = "beta"
    links = ("logit", "probit", "cloglog", "cauchit")
    parameter_names = ("precision",)
    parameter_label = "Dispersion parameter for beta family ()"

    def __init__(self, link: str | None = None, precision: float | None = None):
        super().__init__(link, precision=precision)

    def log_density(self, y, mu, prior):
        phi = self.parameter("precision")
        a, b = mu * phi, (1 - mu) * phi
        return prior * (special.gammaln(phi) - special.gammaln(a) - special.gammaln(b)
                        + (a - 1) * np.log(y) + (b - 1) * np.log1p(-y))

    def mu_derivatives(self, y, mu, prior):
        phi = self.parameter("precision")
        a, b = mu * phi, (1 - mu) * phi
        first = phi * (special.digamma(b) - special.digamma(a) + np.log(y) - np.log1p(-y))
        second = -phi**2 * (trigamma(a) + trigamma(b))
        return prior * first, prior * second

    def mu_information(self, mu, prior):
        phi = self.parameter("precision")
        return prior * phi**2 * (trigamma(mu * phi) + trigamma((1 - mu) * phi))

    def variance(self, mu):
        return mu * (1 - mu) / (1 + self.parameter("precision"))

    def check_response(self, y, prior, response):
        if np.any((y <= 0) | (y >= 1)):
            raise DataError(f"beta response {response!r} must lie strictly inside (0, 1), got e.g. "
                            f"{y[(y <= 0) | (y >= 1)][:3].tolist()}")

    def start_mu(self, y, prior):
        return np.asarray(y, dtype=np.float64).copy()

    def start_parameters(self, y, mu, prior):
        spread = float(np.sum(prior * (y - mu) ** 2) / max(np.sum(prior > 0), 1))
        typical = float(np.mean(mu * (1 - mu)))
        return np.array([max(typical / spread - 1.0, 0.5) if spread > 0 else 10.0])

    def sample(self, mu, prior, rng):
        phi = self.parameter("precision")
        return rng.beta(mu * phi, (1 - mu) * phi)


class Tweedie(Family):
    """Tweedie responses with 1 < power < 2 (compound Poisson-Gamma: exact zeros and positive values, glmmTMB's
    ``tweedie``): Var(y) = phi mu^power; ``dispersion`` phi and ``power`` are estimated unless given. Links log,
    identity.

        log p = log W(y, phi, power) - log y + (y theta - kappa) / phi,   theta = mu^(1-p) / (1-p),
        kappa = mu^(2-p) / (2-p),   and log p = -kappa / phi at y = 0,

    W = sum_j W_j the series of Dunn and Smyth (2005), summed in log space over the terms around its largest
    (no maintained Python package evaluates this density; scipy has none). Its derivatives in mu are closed form.
    """

    name = "tweedie"
    links = ("log", "identity")
    parameter_names = ("dispersion", "power")
    parameter_ranges = (None, (1.0, 2.0))
    parameter_label = "Dispersion parameter for tweedie family ()"
    more_parameter_labels = ("Tweedie power parameter",)
    parameter_limit_note = "a power at 1 is a Poisson-like count model, at 2 a Gamma model"

    def __init__(self, link: str | None = None, dispersion: float | None = None, power: float | None = None):
        super().__init__(link, dispersion=dispersion, power=power)

    def log_density(self, y, mu, prior):
        return -0.5 * (self.minus2_loglik_kernel(y, mu, prior) + self.minus2_loglik_constant(y, prior))

    def minus2_loglik_kernel(self, y, mu, prior):
        """-2 (y theta - kappa) / phi: the part that depends on mu (PIRLS and quadrature evaluate only this)."""
        phi, p = self.parameter("dispersion"), self.parameter("power")
        with np.errstate(invalid="ignore", divide="ignore"):
            value = (y * mu ** (1 - p) / (1 - p) - mu ** (2 - p) / (2 - p)) / phi
        return -2.0 * prior * np.where(mu > 0, value, np.nan)

    def minus2_loglik_constant(self, y, prior):
        """-2 (log W(y, phi, p) - log y) for y > 0: the series, free of mu, kept for the last y it was asked for
        (PIRLS asks for the same response at every step)."""
        cached = self.__dict__.get("_cache_series")
        if cached is None or cached[0] is not y:
            y_values = np.asarray(y, dtype=np.float64)
            positive = y_values > 0
            safe = np.where(positive, y_values, 1.0)
            series = _tweedie_log_series(safe.ravel(), self.parameter("dispersion"), self.parameter("power"))
            cached = (y, np.where(positive, -2.0 * (series.reshape(safe.shape) - np.log(safe)), 0.0))
            self.__dict__["_cache_series"] = cached
        return prior * cached[1]

    def mu_derivatives(self, y, mu, prior):
        phi, p = self.parameter("dispersion"), self.parameter("power")
        return prior * (y - mu) * mu**-p / phi, prior * (-p * y * mu ** (-p - 1) + (p - 1) * mu**-p) / phi

    def mu_information(self, mu, prior):
        return prior * mu ** -self.parameter("power") / self.parameter("dispersion")

    def variance(self, mu):
        return self.parameter("dispersion") * mu ** self.parameter("power")

    def deviance_residuals(self, y, mu, prior):
        p = self.parameter("power")
        with np.errstate(invalid="ignore", divide="ignore"):
            cross = np.where(y > 0, y * (y ** (1 - p) - mu ** (1 - p)) / (1 - p), 0.0)
        return 2 * prior * (cross - (np.where(y > 0, y ** (2 - p), 0.0) - mu ** (2 - p)) / (2 - p))

    def check_response(self, y, prior, response):
        if np.any(y < 0):
            raise DataError(f"tweedie response {response!r} must be non-negative, got e.g. {y[y < 0][:3].tolist()}")
        if np.all(y[prior > 0] == 0):
            raise DataError(f"tweedie response {response!r} is 0 in every row: the likelihood has no maximum")

    def start_mu(self, y, prior):
        return np.maximum(np.asarray(y, dtype=np.float64), 0.1 * max(float(np.mean(y)), 1e-12))

    def start_parameters(self, y, mu, prior):
        known = self.parameters
        p = known[1] if np.isfinite(known[1]) else 1.5
        phi = float(np.sum(prior * (y - mu) ** 2 / mu**p) / max(np.sum(prior > 0), 1))
        values = np.array([max(phi, 1e-6), p])
        return values[self.estimated]

    def sample(self, mu, prior, rng):
        phi, p = self.parameter("dispersion"), self.parameter("power")
        counts = rng.poisson(mu ** (2 - p) / (phi * (2 - p)))
        shape, scale = (2 - p) / (p - 1), phi * (p - 1) * mu ** (p - 1)
        return np.where(counts > 0, rng.gamma(np.maximum(counts, 1) * shape, scale), 0.0)


def _tweedie_log_series(y: np.ndarray, phi: float, p: float) -> np.ndarray:
    """log W(y, phi, p) of Dunn and Smyth's series, W = sum_{j >= 1} W_j with
    log W_j = j (-alpha log y + alpha log(p - 1) - (1 - alpha) log phi - log(2 - p)) - lgamma(j + 1) - lgamma(-j alpha),
    alpha = (2 - p) / (1 - p): the terms peak near j = y^(2-p) / (phi (2 - p)); each row sums a window around it
    wide enough that the terms left out are below e^-37 of the largest."""
    alpha = (2 - p) / (1 - p)
    per_j = -alpha * np.log(y) + alpha * np.log(p - 1) - (1 - alpha) * np.log(phi) - np.log(2 - p)
    peak = np.maximum(y ** (2 - p) / (phi * (2 - p)), 1.0)
    half = np.ceil(10 * np.sqrt(peak) + 40)
    low = np.maximum(1.0, np.floor(peak - half))
    width = int(np.max(np.ceil(peak + half) - low)) + 1
    j = low[:, None] + np.arange(width)[None, :]
    log_terms = j * per_j[:, None] - special.gammaln(j + 1) - special.gammaln(-j * alpha)
    return special.logsumexp(log_terms, axis=1)


class ZeroInflated(Family):
    """A count family with structural zeros (glmmTMB's ``ziformula``): with probability pi_i = expit(X_zi gamma)
    row i is 0, else it is drawn from the base family:

        p(0) = pi + (1 - pi) f(0 | mu),   p(y) = (1 - pi) f(y | mu) for y > 0,   E[y] = (1 - pi) mu.

    ``zi_matrix`` holds X_zi for the model's rows (``zi_names`` its columns); gamma is estimated with theta,
    beta and the base family's parameters. ``mu`` is the conditional model's mean, as glmmTMB's ``type =
    "conditional"``; :meth:`response_mean` is the zero-inflated mean.
    """

    has_dispersion = True
    has_fisher_information = False
    sub_model_title = "Zero-inflation model"

    def __init__(self, base: Family, zi_matrix: np.ndarray, zi_names: list[str]):
        if not base.zero_inflatable:
            raise DataError(f"zero-inflation (ziformula) wraps the count families (poisson, negative_binomial, "
                            f"negative_binomial1), not {base.name}")
        if isinstance(base, ZeroInflated):
            raise DataError("the family is zero-inflated already")
        self.base, self.zi_matrix = base, np.asarray(zi_matrix, dtype=np.float64)
        self.name, self.links, self.canonical_link = f"zero-inflated {base.name}", base.links, None
        self.parameter_names = tuple(base.parameter_names) + tuple(f"zi_{name}" for name in zi_names)
        self.parameter_ranges = tuple(list(base.parameter_ranges) or [None] * len(base.parameter_names)) + (FREE,) * len(zi_names)
        self.parameter_label, self.can_separate = base.parameter_label, False
        self.zi_names = list(zi_names)
        super().__init__(base.link.name)
        self.parameters = np.concatenate([base.parameters, np.full(len(zi_names), np.nan)])
        self.estimated = np.concatenate([base.estimated, np.ones(len(zi_names), dtype=bool)])

    def _parts(self) -> tuple[Family, np.ndarray]:
        cached = self.__dict__.get("_cache_parts")
        if cached is None:
            count = len(self.base.parameter_names)
            base = self.base._copy()
            base.parameters = self.parameters[:count].copy()
            gamma = self.parameters[count:]
            if not np.all(np.isfinite(gamma)):
                raise DataError("the zero-inflation coefficients are not known yet (they are estimated by the fit)")
            cached = (base, special.expit(self.zi_matrix @ gamma))
            self.__dict__["_cache_parts"] = cached
        return cached

    def log_density(self, y, mu, prior):
        base, pi = self._parts()
        log_f = base.log_density(y, mu, np.ones_like(np.asarray(y, dtype=np.float64)))
        with np.errstate(divide="ignore"):
            zero = np.logaddexp(np.log(pi), np.log1p(-pi) + log_f)
        return prior * np.where(np.asarray(y) == 0, zero, np.log1p(-pi) + log_f)

    def mu_derivatives(self, y, mu, prior):
        base, pi = self._parts()
        ones = np.ones_like(np.asarray(y, dtype=np.float64))
        first, second = base.mu_derivatives(y, mu, ones)
        # at y = 0: l = log(pi + (1 - pi) g), g = f(0 | mu), g' = g l_f', g'' = g (l_f'^2 + l_f'')
        g = np.exp(base.log_density(np.zeros_like(ones), mu, ones))
        share = (1 - pi) * g / (pi + (1 - pi) * g)  # the posterior probability that a zero is a count zero
        zero_first = share * first
        zero_second = share * (first**2 + second) - zero_first**2
        zero = np.asarray(y) == 0
        return prior * np.where(zero, zero_first, first), prior * np.where(zero, zero_second, second)

    def response_mean(self, mu):
        return (1 - self._parts()[1]) * mu

    def variance(self, mu):
        base, pi = self._parts()
        return (1 - pi) * (base.variance(mu) + pi * mu**2)

    def check_response(self, y, prior, response):
        self.base.check_response(y, prior, response)

    def start_mu(self, y, prior):
        return self.base.start_mu(y, prior)

    def start_parameters(self, y, mu, prior):
        base_start = self.base.start_parameters(y, mu, prior)
        # the intercept (if any) at the share of zeros the count model does not explain, at least 5%
        ones = np.ones_like(y)
        base = self.base._copy()
        base.parameters = np.where(np.isfinite(self.base.parameters), self.base.parameters, 1.0)
        expected = float(np.mean(np.exp(base.log_density(np.zeros_like(y), mu, ones))))
        excess = min(max(float(np.mean(y == 0)) - expected, 0.05), 0.9)
        gamma = np.zeros(self.zi_matrix.shape[1])
        intercept = np.flatnonzero(np.all(self.zi_matrix == 1.0, axis=0))
        if intercept.size:
            gamma[intercept[0]] = special.logit(excess)
        return np.concatenate([base_start, gamma])

    def sample(self, mu, prior, rng):
        base, pi = self._parts()
        return np.where(rng.random(mu.shape) < pi, 0.0, base.sample(mu, prior, rng))


class DispersionModel(Family):
    """A family whose first parameter varies by row (glmmTMB's ``dispformula``): s log(phi_i) = X_disp delta,
    s glmmTMB's sign for the family (the log of a negative binomial's size, of a Gaussian's sigma^2, of a Gamma's
    shape); delta is estimated with theta and beta, and the family's other parameters stay scalars."""

    sub_model_title = "Dispersion model"

    def __init__(self, base: Family, disp_matrix: np.ndarray, disp_names: list[str]):
        if not base.parameter_names or not base.estimated[0]:
            raise DataError(f"a dispersion model (dispformula) needs a family with an estimated dispersion "
                            f"parameter; {base.name} has none")
        if base.sub_model_title is not None:
            raise DataError("a dispersion model cannot be combined with another sub-model yet")
        self.base, self.disp_matrix = base, np.asarray(disp_matrix, dtype=np.float64)
        self.target = base.parameter_names[0]
        self.name, self.links, self.canonical_link = base.name, base.links, base.canonical_link
        base_ranges = list(base.parameter_ranges) or [None] * len(base.parameter_names)
        self.parameter_names = tuple(base.parameter_names[1:]) + tuple(f"disp_{name}" for name in disp_names)
        self.parameter_ranges = tuple(base_ranges[1:]) + (FREE,) * len(disp_names)
        self.parameter_label, self.has_dispersion, self.can_separate = "", base.has_dispersion, base.can_separate
        self.zero_inflatable = base.zero_inflatable  # a zero-inflation model may wrap this one (glmmTMB's both)
        self.has_fisher_information = base.has_fisher_information
        super().__init__(base.link.name)
        self.parameters = np.concatenate([base.parameters[1:], np.full(len(disp_names), np.nan)])
        self.estimated = np.concatenate([base.estimated[1:], np.ones(len(disp_names), dtype=bool)])

    def _base(self) -> Family:
        cached = self.__dict__.get("_cache_base")
        if cached is None:
            count = len(self.base.parameter_names) - 1
            delta = self.parameters[count:]
            if not np.all(np.isfinite(delta)):
                raise DataError("the dispersion model's coefficients are not known yet (they are estimated by the fit)")
            cached = self.base._copy()
            cached.parameters = np.concatenate([[1.0], self.parameters[:count]])
            row_values = np.exp(np.clip(self.base.dispersion_model_sign * (self.disp_matrix @ delta), -700, 700))
            cached.__dict__["row_parameters"] = {self.target: row_values}
            self.__dict__["_cache_base"] = cached
        return cached

    def log_density(self, y, mu, prior):
        return self._base().log_density(y, mu, prior)

    def mu_derivatives(self, y, mu, prior):
        return self._base().mu_derivatives(y, mu, prior)

    def mu_information(self, mu, prior):
        return self._base().mu_information(mu, prior)

    def variance(self, mu):
        return self._base().variance(mu)

    def deviance_residuals(self, y, mu, prior):
        return self._base().deviance_residuals(y, mu, prior)

    def minus2_loglik_kernel(self, y, mu, prior):
        return self._base().minus2_loglik_kernel(y, mu, prior)

    def minus2_loglik_constant(self, y, prior):
        return self._base().minus2_loglik_constant(y, prior)

    def check_response(self, y, prior, response):
        self.base.check_response(y, prior, response)

    def start_mu(self, y, prior):
        return self.base.start_mu(y, prior)

    def start_parameters(self, y, mu, prior):
        natural = self.base.start_parameters(y, mu, prior)
        # the intercept (if any) at the base family's moment estimate, the other coefficients 0
        delta = np.zeros(self.disp_matrix.shape[1])
        intercept = np.flatnonzero(np.all(self.disp_matrix == 1.0, axis=0))
        if intercept.size and natural.size:
            delta[intercept[0]] = self.base.dispersion_model_sign * np.log(natural[0])
        return np.concatenate([natural[1:], delta])

    def sample(self, mu, prior, rng):
        return self._base().sample(mu, prior, rng)


FAMILIES: dict[str, type[Family]] = {
    "binomial": Binomial, "poisson": Poisson, "negative_binomial": NegativeBinomial, "nbinom2": NegativeBinomial,
    "negative_binomial1": NegativeBinomial1, "nbinom1": NegativeBinomial1,
    "gamma": Gamma, "inverse.gaussian": InverseGaussian, "inverse_gaussian": InverseGaussian,
    "gaussian": Gaussian, "beta": Beta, "tweedie": Tweedie,
}


def get_family(family, link: str | None = None) -> Family:
    """A :class:`Family` from a name ("binomial", "poisson", "negative_binomial", "Gamma", "inverse.gaussian",
    "gaussian", "beta"), a Family instance or a class.

    >>> get_family("binomial", link="probit")
    Binomial(link='probit')
    """
    if isinstance(family, Family):
        if link is not None and link != family.link.name:
            raise DataError(f"family {family!r} already has link {family.link.name!r}; link={link!r} contradicts it")
        return family
    if isinstance(family, type) and issubclass(family, Family):
        return family(link)
    if isinstance(family, str) and family.lower() in FAMILIES:
        chosen = FAMILIES[family.lower()]
        if chosen is Gaussian and link in (None, "identity"):
            raise DataError("a Gaussian response with the identity link is a linear mixed model: use tfmixed.lmer "
                            "(family='gaussian' takes link='log' or 'inverse' here)")
        return chosen(link)
    raise DataError(f"family must be one of {sorted(set(FAMILIES))} (or a tfmixed.families.Family), got {family!r}")


class LogDensityFamily(Family):
    """A family written as its log-density alone; its derivatives in mu come from TensorFlow's autodiff.

    ``log_density(y, mu, params)`` takes TensorFlow float64 tensors (``params`` one entry per name in
    ``parameters``, on the natural scale) and returns log p per row with tf.math functions. ``parameters`` maps
    each parameter's name to a positive starting value; it is estimated (on the log scale) with the covariance
    parameters. The function is traced once (``tf.function``) and evaluated for all rows at once; the second
    derivative is the observed information (no closed-form Fisher information is assumed).

    >>> from tfmixed._tf import tf  # TensorFlow, imported without its start-up messages
    >>> def poisson(y, mu, params):
    ...     return y * tf.math.log(mu) - mu - tf.math.lgamma(y + 1.0)
    >>> fam = LogDensityFamily("my_poisson", poisson, link="log")
    >>> first, second = fam.mu_derivatives(np.array([2.0]), np.array([4.0]), np.ones(1))
    >>> first.round(6).tolist(), second.round(6).tolist()  # y / mu - 1 and -y / mu^2
    ([-0.5], [-0.125])
    """

    has_dispersion = True
    has_fisher_information = False

    def __init__(self, name: str, log_density: Callable, *, link: str = "log",
                 links: tuple[str, ...] = ("log", "identity", "logit", "inverse", "sqrt"),
                 parameters: dict[str, float] | None = None, check: Callable | None = None,
                 start_mu: Callable | None = None):
        from ._tf import tf

        self.name, self.links = name, tuple(links)
        self.parameter_names = tuple(parameters or {})
        self.parameter_label = f"Parameters of the {name} family"
        super().__init__(link)
        self.parameters = np.array([float(v) for v in (parameters or {}).values()], dtype=np.float64)
        if np.any(~np.isfinite(self.parameters)) or np.any(self.parameters <= 0):
            raise DataError(f"the starting values of {name}'s parameters must be positive numbers, got {parameters}")
        self.estimated = np.ones(self.parameters.size, dtype=bool)
        self._function, self._check, self._start_mu = log_density, check, start_mu
        self._tf = tf

        # written with tensor operations, the log-density needs no AutoGraph conversion (which would warn for a
        # function defined in a notebook or shell, whose source it cannot read)
        log_density = tf.autograph.experimental.do_not_convert(log_density)

        @tf.function(reduce_retracing=True)
        def derivatives(y, mu, params):
            with tf.GradientTape() as outer:
                outer.watch(mu)
                with tf.GradientTape() as inner:
                    inner.watch(mu)
                    value = log_density(y, mu, params)
                first = inner.gradient(value, mu)
            return value, first, outer.gradient(first, mu)

        self._derivatives = derivatives

    def _evaluate(self, y, mu):
        tf = self._tf
        as_tensor = lambda a: tf.convert_to_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
        value, first, second = self._derivatives(as_tensor(y), as_tensor(mu), as_tensor(self.parameters))
        return value.numpy(), first.numpy(), second.numpy()

    def log_density(self, y, mu, prior):
        return prior * self._evaluate(y, mu)[0]

    def mu_derivatives(self, y, mu, prior):
        _, first, second = self._evaluate(y, mu)
        return prior * first, prior * second

    def variance(self, mu):
        raise DataError(f"the {self.name} family defines no variance function (Pearson residuals need one)")

    def check_response(self, y, prior, response):
        if self._check is not None:
            self._check(y)
        values = self._evaluate(y, self.start_mu(y, prior))[0]
        if not np.all(np.isfinite(values)):
            raise DataError(f"the {self.name} log-density is not finite at the response {response!r}'s starting "
                            "means: check the response's range")

    def start_mu(self, y, prior):
        if self._start_mu is not None:
            return np.asarray(self._start_mu(y), dtype=np.float64)
        return np.asarray(y, dtype=np.float64) + 0.1

    def start_parameters(self, y, mu, prior):
        return self.parameters.copy()
