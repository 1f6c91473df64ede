"""Exponential families and link functions of generalised linear (mixed) models, as R's ``family`` objects.

A family gives, for the mean mu = g^{-1}(eta) and prior weights w (binomial: trials):

* the IRLS (Fisher scoring) weights w (d mu / d eta)^2 / V(mu) and the working residual (y - mu) / (d mu / d eta),
* the deviance residuals d_i (their sum is the deviance, 2 (loglik(saturated) - loglik)),
* ``minus2_loglik``, -2 log p(y | mu) with every constant (R's ``family$aic`` without the 2 k),
* the checks that y is a possible response (0/1 or a proportion with trials; non-negative counts).

Numerically stable forms come from scipy.special (expit, log_ndtr, xlogy, gammaln); no hand-written
special functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from .errors import DataError

#: mu is kept this far inside (0, 1) / above 0 so that logs and variances stay finite (R's binomial does the same)
_EPS = np.finfo(np.float64).eps


@dataclass(frozen=True)
class Link:
    """A link function g with inverse and derivative d mu / d eta."""

    name: str

    def link(self, mu: np.ndarray) -> np.ndarray:
        """eta = g(mu)."""
        if self.name == "logit":
            return special.logit(mu)
        if self.name == "probit":
            return special.ndtri(mu)
        if self.name == "cloglog":
            return np.log(-np.log1p(-mu))
        return np.log(mu)

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        """mu = g^{-1}(eta), kept strictly inside the family's range."""
        if self.name == "logit":
            return np.clip(special.expit(eta), _EPS, 1 - _EPS)
        if self.name == "probit":
            return np.clip(special.ndtr(eta), _EPS, 1 - _EPS)
        if self.name == "cloglog":
            return np.clip(-np.expm1(-np.exp(np.minimum(eta, 700.0))), _EPS, 1 - _EPS)
        return np.maximum(np.exp(np.minimum(eta, 700.0)), _EPS)

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        """d mu / d eta."""
        if self.name == "logit":
            p = special.expit(eta)
            return np.maximum(p * (1 - p), _EPS)
        if self.name == "probit":
            return np.maximum(np.exp(-0.5 * eta**2) / np.sqrt(2 * np.pi), _EPS)
        if self.name == "cloglog":
            eta = np.minimum(eta, 700.0)
            return np.maximum(np.exp(eta - np.exp(eta)), _EPS)
        return np.maximum(np.exp(np.minimum(eta, 700.0)), _EPS)


class Family:
    """Base of the families: the variance function, deviance residuals, -2 log-likelihood and checks."""

    name = ""
    links: tuple[str, ...] = ()
    #: whether the family has a dispersion (scale) parameter that an observation-level random effect would be
    #: confounded with (the safe default for a new family); binomial and Poisson have none
    has_dispersion = True

    def __init__(self, link: str | None = None):
        link = self.links[0] if link is None else link
        if link not in self.links:
            raise DataError(f"the {self.name} family takes link {' or '.join(map(repr, self.links))}, got {link!r}")
        self.link = Link(link)

    @property
    def canonical(self) -> bool:
        """Whether the link is canonical (then Fisher scoring is Newton's method)."""
        return self.link.name == self.links[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(link={self.link.name!r})"

    def working_weights(self, mu: np.ndarray, eta: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """IRLS weights w (d mu / d eta)^2 / V(mu)."""
        return prior * self.link.mu_eta(eta) ** 2 / self.variance(mu)

    def variance(self, mu: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def variance_derivative(self, mu: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """V'(mu); under the canonical link it is d log w / d eta, the change of the IRLS weights."""
        raise NotImplementedError

    def deviance_residuals(self, y, mu, prior) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def minus2_loglik(self, y, mu, prior) -> np.ndarray:
        """-2 log p(y | mu) per row, every constant included."""
        return self.minus2_loglik_kernel(y, mu, prior) + self.minus2_loglik_constant(y, prior)

    def minus2_loglik_kernel(self, y, mu, prior) -> np.ndarray:  # pragma: no cover - abstract
        """The part of -2 log p(y | mu) that depends on mu (quadrature evaluates it at every knot)."""
        raise NotImplementedError

    def minus2_loglik_constant(self, y, prior) -> np.ndarray:  # pragma: no cover - abstract
        """The part of -2 log p(y | mu) free of mu (a log binomial coefficient, log y!)."""
        raise NotImplementedError

    def check_response(self, y: np.ndarray, prior: np.ndarray, response: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def start_mu(self, y: np.ndarray, prior: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class Binomial(Family):
    """Binomial responses: y a proportion of ``prior`` trials (0/1 with weight 1). Links logit, probit, cloglog.

    >>> fam = Binomial()  # one success in two trials at p = 0.5: -2 log(2 * 0.25)
    >>> round(float(fam.minus2_loglik(np.array([0.5]), np.array([0.5]), np.array([2.0]))[0]), 6)
    1.386294
    """

    name = "binomial"
    links = ("logit", "probit", "cloglog")
    has_dispersion = False

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


class Poisson(Family):
    """Poisson counts with the (canonical) log link.

    >>> round(float(Poisson().minus2_loglik(np.array([2.0]), np.array([2.0]), np.array([1.0]))[0]), 6)
    2.613706
    """

    name = "poisson"
    links = ("log",)
    has_dispersion = False

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
        if np.any(y < 0):
            raise DataError(f"poisson response {response!r} has negative values (e.g. {y[y < 0][:3].tolist()})")
        if np.any(np.abs(y - np.round(y)) > 1e-7 * np.maximum(np.abs(y), 1)):
            raise DataError(f"poisson response {response!r} has non-integer values (e.g. "
                            f"{y[np.abs(y - np.round(y)) > 1e-7][:3].tolist()}); a rate needs offset(log(exposure))")

    def start_mu(self, y, prior):
        return y + 0.1


FAMILIES = {"binomial": Binomial, "poisson": Poisson}


def get_family(family, link: str | None = None) -> Family:
    """A :class:`Family` from a name ("binomial", "poisson"), a Family instance or a class.

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
        return FAMILIES[family.lower()](link)
    if isinstance(family, str) and family.lower() in ("gaussian", "normal"):
        raise DataError("a Gaussian response is a linear mixed model: use tfmixed.lmer")
    raise DataError(f"family must be 'binomial' or 'poisson' (or a tfmixed.families.Family), got {family!r}")
