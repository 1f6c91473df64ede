"""Families with parameters of their own (issue 24): negative binomial, Gamma, Gaussian with a link, beta, and a
family written only as its log-density, against glmmTMB 1.1.5's tight refits (tools/family_references.R)."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tfmixed as tm
from tfmixed.families import Gamma, LogDensityFamily, NegativeBinomial, Tweedie

REFERENCES = Path(__file__).parent / "reference" / "families"

#: glmmTMB's family name -> (tfmixed's family, the parameter and how glmmTMB's sigma(fit) gives it)
FAMILY_MAP = {
    "nbinom2": ("negative_binomial", "size", lambda sigma: sigma),
    "nbinom1": ("negative_binomial1", "dispersion", lambda sigma: sigma),
    "Gamma": ("Gamma", "dispersion", lambda sigma: sigma**2),
    "gaussian": ("gaussian", "dispersion", lambda sigma: sigma**2),
    "beta": ("beta", "precision", lambda sigma: sigma),
    "tweedie": ("tweedie", "dispersion", lambda sigma: sigma),
}

SUPPORTED = ["sal_nb2", "sal_nb2_spp", "owls_nb2", "grouse_nb2", "sal_nb1", "owls_nb1", "sleep_gamma_log", "sleep_gamma_log_int",
             "sleep_gamma_inverse", "ortho_gamma_identity", "sleep_gaussian_log", "sleep_gaussian_inverse",
             "beta_logit", "owls_tweedie"]


def load(reference_id: str) -> tuple[dict, pd.DataFrame]:
    reference = json.loads((REFERENCES / f"{reference_id}.json").read_text())
    frame = pd.read_csv(REFERENCES / reference["csv"])
    for column, levels in reference.get("factor_levels", {}).items():
        if column in frame.columns:
            frame[column] = pd.Categorical(frame[column].astype(str), categories=[str(level) for level in levels])
    return reference, frame


@pytest.fixture(scope="module", params=SUPPORTED)
def case(request):
    reference, frame = load(request.param)
    family, parameter, from_sigma = FAMILY_MAP[reference["family"]]
    fit = tm.glmer(reference["formula"], frame, family=family, link=reference["link"], verbose=False)
    return reference, fit, parameter, from_sigma(reference["sigma"])


def test_log_likelihood(case):
    reference, fit, _, _ = case
    assert fit.loglik == pytest.approx(reference["logLik"], rel=1e-8)
    assert fit.converged


def test_fixed_effects_and_standard_errors(case):
    reference, fit, _, _ = case
    assert list(fit.fixef.index) == list(reference["fixef"])
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(reference["fixef"].values()), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fit.fixef_se.to_numpy(), list(reference["fixef_se"].values()), rtol=1e-4)


def test_variance_components_and_family_parameter(case):
    reference, fit, parameter, expected = case
    sd = [row["sdcor"] for row in reference["varcorr"]]
    np.testing.assert_allclose(fit.varcorr["sdcor"].to_numpy(), sd, rtol=1e-3, atol=1e-5)
    assert fit.family_parameters[parameter] == pytest.approx(expected, rel=1e-3)


def test_tweedie_power():
    reference, frame = load("owls_tweedie")
    fit = tm.glmer(reference["formula"], frame, family="tweedie", verbose=False)
    assert fit.family_parameters["power"] == pytest.approx(reference["family_params"]["Tweedie power"], rel=1e-4)
    assert "Tweedie power parameter: 1.295" in fit.summary()


def test_fitted_values_and_linear_predictor(case):
    reference, fit, _, _ = case
    np.testing.assert_allclose(fit.fitted[:10], reference["fitted_head"], rtol=1e-5)
    np.testing.assert_allclose(fit.linear_predictor()[:10], reference["linpred_head"], rtol=1e-5, atol=1e-7)


def test_summary_prints_the_family_parameter(case):
    reference, fit, parameter, expected = case
    text = fit.summary()
    assert fit.family.parameter_label in text and f"{parameter} = " in text
    assert fit.n_params == len(reference["fixef"]) + len(reference["varcorr"]) + fit.family.n_estimated
    assert fit.aic == pytest.approx(reference["AIC"], rel=1e-8)


def test_a_family_written_as_its_log_density_alone():
    """The generalised Poisson (glmmTMB's genpois), written only as log p with TensorFlow functions: the
    derivatives come from autodiff, and the fit reaches glmmTMB's maximum."""
    from tfmixed._tf import tf

    def generalised_poisson(y, mu, params):
        # glmmTMB's parametrisation: phi = Var / mu, theta = mu / sqrt(phi), lambda = 1 - 1 / sqrt(phi)
        root = tf.sqrt(params[0])
        theta, lam = mu / root, 1.0 - 1.0 / root
        return tf.math.log(theta) + (y - 1.0) * tf.math.log(theta + lam * y) - theta - lam * y - tf.math.lgamma(y + 1.0)

    reference, frame = load("sal_genpois")
    family = LogDensityFamily("genpois", generalised_poisson, link="log", parameters={"phi": 2.0},
                              start_mu=lambda y: y + 0.5)
    fit = tm.glmer(reference["formula"], frame, family=family, verbose=False)
    assert fit.loglik == pytest.approx(reference["logLik"], rel=1e-8)
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(reference["fixef"].values()), rtol=1e-4)
    assert fit.family_parameters["phi"] == pytest.approx(reference["sigma"], rel=1e-3)
    assert fit.varcorr["sdcor"].iloc[0] == pytest.approx(reference["varcorr"][0]["sdcor"], rel=1e-3)


def test_closed_form_and_autodiff_derivatives_agree():
    from tfmixed._tf import tf

    def nb2(y, mu, params):
        k = params[0]
        return (tf.math.lgamma(y + k) - tf.math.lgamma(k) - tf.math.lgamma(y + 1.0) + k * tf.math.log(k / (k + mu))
                + y * tf.math.log(mu / (k + mu)))

    y = np.array([0.0, 1.0, 3.0, 10.0])
    mu = np.array([0.5, 1.2, 2.0, 7.5])
    prior = np.ones(4)
    closed = NegativeBinomial(size=1.7)
    automatic = LogDensityFamily("nb2", nb2, parameters={"size": 1.7})
    np.testing.assert_allclose(automatic.log_density(y, mu, prior), closed.log_density(y, mu, prior), rtol=1e-12)
    for a, b in zip(automatic.mu_derivatives(y, mu, prior), closed.mu_derivatives(y, mu, prior)):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def integrated_loglik(fit, log_density) -> float:
    """log L of a one-term random-intercept model, integrated per level by scipy's adaptive quadrature at the
    fit's estimates: sum_j log integral prod_i p(y_i | X_i beta + b) N(b; 0, sd^2) db."""
    from scipy import integrate, stats

    sd = fit.varcorr["sdcor"].iloc[0]
    fixed = fit.design.X @ fit.fixef.to_numpy() + fit.design.offset_or_zero
    codes, y = fit.design.terms[0].codes, fit.design.y
    total = 0.0
    for level in range(fit.design.terms[0].n_levels):
        rows = codes == level
        base = np.sum(log_density(y[rows], fixed[rows]))

        def integrand(b, rows=rows, base=base):
            return np.exp(np.sum(log_density(y[rows], fixed[rows] + b)) - base) * stats.norm.pdf(b, scale=sd)

        value, _ = integrate.quad(integrand, -12 * sd, 12 * sd, epsabs=0, epsrel=1e-12, limit=200)
        total += base + np.log(value)
    return total


def test_quadrature_value_is_the_likelihood_integral():
    """The negative binomial likelihood integrated per site by scipy's adaptive quadrature, at the nAGQ = 25
    estimates, equals the fit's log-likelihood (a direct check of the criterion, constants included); the
    Laplace fit's differs from it by the Laplace error."""
    from scipy import stats

    reference, frame = load("sal_nb2")
    fit = tm.glmer(reference["formula"], frame, family="negative_binomial", nAGQ=25, verbose=False)
    size = fit.family_parameters["size"]
    total = integrated_loglik(fit, lambda y, eta: stats.nbinom.logpmf(y, size, size / (size + np.exp(eta))))
    assert fit.loglik == pytest.approx(total, rel=1e-9)
    laplace = tm.glmer(reference["formula"], frame, family="negative_binomial", verbose=False)
    assert 0 < abs(laplace.loglik - total) < 0.1


def test_inverse_gaussian_likelihood_is_the_integral():
    """No peer fits an inverse Gaussian GLMM by maximum likelihood (lme4's value plugs in deviance / n for the
    dispersion; glmmTMB has no such family): the check is scipy's integral of scipy's density, at nAGQ = 25."""
    from scipy import stats

    sleep = tm.datasets.load("sleepstudy")
    fit = tm.glmer("Reaction ~ Days + (1 | Subject)", sleep, family="inverse.gaussian", link="log", nAGQ=25,
                   verbose=False)
    phi = fit.family_parameters["dispersion"]

    def log_density(y, eta):
        mu = np.exp(eta)  # scipy's invgauss(m, scale=s): mean m s, variance m^3 s^2 = phi mu^3 with s = 1 / phi
        return stats.invgauss.logpdf(y, mu * phi, scale=1 / phi)

    assert fit.loglik == pytest.approx(integrated_loglik(fit, log_density), rel=1e-9)
    laplace = tm.glmer("Reaction ~ Days + (1 | Subject)", sleep, family="inverse.gaussian", link="log", verbose=False)
    assert laplace.converged and abs(laplace.loglik - fit.loglik) < 0.05


@pytest.mark.parametrize("family, values, message", [
    ("negative_binomial", [-1.0, 2.0], "negative values"),
    ("negative_binomial", [0.5, 2.0], "non-integer"),
    ("Gamma", [0.0, 2.0], "must be positive"),
    ("inverse.gaussian", [-1.0, 2.0], "must be positive"),
    ("beta", [0.0, 0.5], r"strictly inside \(0, 1\)"),
    ("beta", [1.0, 0.5], r"strictly inside \(0, 1\)"),
])
def test_responses_outside_the_familys_support_are_refused(family, values, message):
    frame = tm.datasets.load("sleepstudy").assign(y=lambda d: np.resize(values, len(d)) if family != "beta"
                                                  else np.resize(values, len(d)))
    with pytest.raises(tm.DataError, match=message):
        tm.glmer("y ~ Days + (1 | Subject)", frame, family=family, verbose=False)


def test_fixed_family_parameters_are_not_estimated():
    reference, frame = load("sal_nb2")
    fit = tm.glmer(reference["formula"], frame, family=NegativeBinomial(size=0.5), verbose=False)
    assert fit.family_parameters["size"] == 0.5 and fit.n_params == 3
    free = tm.glmer(reference["formula"], frame, family="negative_binomial", verbose=False)
    assert free.loglik > fit.loglik  # the estimated size (0.639) is the maximum


def test_bad_family_parameters_and_links():
    with pytest.raises(tm.DataError, match="positive number"):
        NegativeBinomial(size=-1.0)
    with pytest.raises(tm.DataError, match="takes link"):
        Gamma(link="logit")
    with pytest.raises(tm.DataError, match="strictly between 1 and 2"):
        Tweedie(power=2.5)
    with pytest.raises(tm.DataError, match="non-negative"):
        tm.glmer("y ~ Days + (1 | Subject)", tm.datasets.load("sleepstudy").assign(y=lambda d: d.Days - 3.0),
                 family="tweedie", verbose=False)
    with pytest.raises(tm.DataError, match="lmer"):
        tm.glmer("Reaction ~ Days + (1 | Subject)", tm.datasets.load("sleepstudy"), family="gaussian")
    with pytest.raises(tm.DataError, match="method='em'"):
        tm.glmer("Reaction ~ Days + (1 | Subject)", tm.datasets.load("sleepstudy"), family="Gamma", link="log",
                 method="em", verbose=False)


def test_conditional_variances_are_the_laplace_gaussians():
    """ranef's condsd is the inverse curvature of the Laplace approximation at the mode, with the observed
    information: for a scalar term theta^2 / (theta^2 sum_i W_i + 1) per level, W = -d^2 log p / d eta^2."""
    reference, frame = load("sal_nb1")
    fit = tm.glmer(reference["formula"], frame, family="nbinom1", verbose=False)
    eta = fit.linear_predictor()
    weights = fit.family.laplace_weights(fit.design.y, fit.fitted, eta, np.ones(fit.nobs))
    term = fit.design.terms[0]
    theta = fit.theta[0]
    expected = theta**2 / (theta**2 * np.bincount(term.codes, weights) + 1.0)
    np.testing.assert_allclose(fit.ranef_condvar[term.name][0][:, 0, 0], expected, rtol=1e-10)
    modes = np.array([row["condval"] for row in reference["ranef"]])
    order = [list(term.levels).index(row["level"]) for row in reference["ranef"]]
    np.testing.assert_allclose(fit.ranef[term.name].iloc[order, 0].to_numpy(), modes, atol=1e-6)


def test_profile_interval_of_the_family_parameter():
    reference, frame = load("sal_nb2")
    fit = tm.glmer(reference["formula"], frame, family="negative_binomial", verbose=False)
    lower, upper = fit.confint(which=["size"], verbose=False).loc["size"]
    from tfmixed.results.profile import profile_likelihood

    profile = profile_likelihood(fit)
    assert lower < fit.family_parameters["size"] < upper
    index = profile.names.index("size")
    for limit, target in ((lower, -1.959964), (upper, 1.959964)):
        assert profile.zeta(index, limit)[0] == pytest.approx(target, abs=1e-4)


def test_likelihood_ratio_test_between_negative_binomial_fits():
    reference, frame = load("sal_nb2")
    full = tm.glmer(reference["formula"], frame, family="negative_binomial", verbose=False)
    null = tm.glmer("count ~ 1 + (1|site)", frame, family="negative_binomial", verbose=False)
    table = tm.anova(null, full).table
    assert table["Df"].iloc[1] == 1
    assert table["Chisq"].iloc[1] == pytest.approx(2 * (full.loglik - null.loglik), rel=1e-10)
    with pytest.raises(tm.DataError, match="different families"):
        tm.anova(tm.glmer(reference["formula"], frame, family="poisson", verbose=False), full)


@pytest.mark.parametrize("reference_id, family, link", [("link_cbpp_cauchit", "binomial", "cauchit"),
                                                         ("link_sal_poisson_sqrt", "poisson", "sqrt")])
def test_non_canonical_links_lme4_accepts(reference_id, family, link):
    """lme4 1.1-31 tight refits (tools/link_references.R): binomial cauchit and Poisson sqrt keep lme4's Fisher
    weights in the Laplace determinant, so lme4's numbers are the reference."""
    reference = json.loads((REFERENCES / f"{reference_id}.json").read_text())
    if reference["dataset"] == "cbpp":
        frame = pd.read_csv(REFERENCES / "data" / "cbpp.csv", dtype={"herd": str, "period": str})
    else:
        _, frame = load("sal_nb2")
    fit = tm.glmer(reference["formula"], frame, family=family, link=link, verbose=False)
    assert fit.loglik == pytest.approx(reference["logLik"], rel=1e-8)
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(reference["fixef"].values()), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fit.theta, reference["theta"], rtol=1e-4, atol=1e-5)


def test_a_size_going_to_infinity_is_reported_like_a_singular_fit():
    """Binomial counts (variance below the mean) have no overdispersion: the negative binomial size runs off to
    infinity and the fit says so (a SingularFitWarning naming the parameter), while its likelihood reaches
    Poisson's from below (the log-density stays accurate for a size of 1e9)."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), 20)
    x = rng.normal(size=groups.size)
    counts = rng.binomial(10, 1 / (1 + np.exp(1.0 - 0.3 * x - rng.normal(scale=0.4, size=30)[groups])))
    frame = pd.DataFrame({"y": counts, "x": x, "g": groups.astype(str)})
    with pytest.warns(tm.errors.SingularFitWarning, match="size = .* edge of its range.*Poisson"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", tm.errors.ConvergenceWarning)
        nb = tm.glmer("y ~ x + (1 | g)", frame, family="negative_binomial", verbose=False)
    poisson = tm.glmer("y ~ x + (1 | g)", frame, family="poisson", verbose=False)
    assert nb.family.parameters_at_limit() == ["size"]
    assert poisson.loglik - 1e-3 < nb.loglik <= poisson.loglik + 1e-6


@pytest.mark.parametrize("reference_id, family", [("sal_zip", "poisson"), ("sal_zinb2", "negative_binomial")])
def test_zero_inflated_counts(reference_id, family):
    """glmmTMB's ziformula: the zero-inflation coefficients (logit scale), their SEs, the conditional model and
    the zero-inflated fitted means E[y] = (1 - pi) mu."""
    reference, frame = load(reference_id)
    fit = tm.glmer(reference["formula"], frame, family=family, ziformula=reference["ziformula"], verbose=False)
    assert fit.loglik == pytest.approx(reference["logLik"], rel=1e-8)
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(reference["fixef"].values()), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fit.fixef_se.to_numpy(), list(reference["fixef_se"].values()), rtol=1e-4)
    zi_names = [f"zi_{name}" for name in reference["fixef_zi"]]
    np.testing.assert_allclose(fit.family_parameters[zi_names].to_numpy(), list(reference["fixef_zi"].values()),
                               rtol=1e-4)
    np.testing.assert_allclose(fit.family_parameters_se[zi_names].to_numpy(),
                               list(reference["fixef_zi_se"].values()), rtol=1e-3)
    assert fit.varcorr["sdcor"].iloc[0] == pytest.approx(reference["varcorr"][0]["sdcor"], rel=1e-3)
    np.testing.assert_allclose(fit.fitted[:10], reference["fitted_head"], rtol=1e-5)
    assert "Zero-inflation model:" in fit.summary()
    assert fit.aic == pytest.approx(reference["AIC"], rel=1e-8)
    if family == "negative_binomial":
        assert fit.family_parameters["size"] == pytest.approx(reference["sigma"], rel=1e-3)


def test_zero_inflation_is_refused_where_it_does_not_apply():
    reference, frame = load("sal_zip")
    with pytest.raises(tm.DataError, match="count families"):
        tm.glmer("Reaction ~ Days + (1 | Subject)", tm.datasets.load("sleepstudy"), family="Gamma", link="log",
                 ziformula="~1", verbose=False)
    with pytest.raises(tm.DataError, match="one-sided formula"):
        tm.glmer(reference["formula"], frame, family="poisson", ziformula="count ~ 1", verbose=False)
    with pytest.raises(tm.DataError, match="random effects in ziformula"):
        tm.glmer(reference["formula"], frame, family="poisson", ziformula="~ (1 | site)", verbose=False)
    fit = tm.glmer(reference["formula"], frame, family="poisson", ziformula="~0", verbose=False)
    assert fit.family.name == "poisson"  # glmmTMB's default: no zero-inflation
    zi = tm.glmer(reference["formula"], frame, family="poisson", ziformula="~1", verbose=False)
    with pytest.raises(tm.DataError, match="type='link'"):
        zi.predict(frame.head(3), type="response")
    assert np.all(np.isfinite(zi.predict(frame.head(3))))


def test_dispersion_model():
    """glmmTMB's dispformula: log(size) = X_disp delta for a negative binomial, coefficients and SEs."""
    reference, frame = load("sal_nb2_disp")
    fit = tm.glmer(reference["formula"], frame, family="negative_binomial", dispformula=reference["dispformula"],
                   verbose=False)
    assert fit.loglik == pytest.approx(reference["logLik"], rel=1e-8)
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(reference["fixef"].values()), rtol=1e-4)
    np.testing.assert_allclose(fit.fixef_se.to_numpy(), list(reference["fixef_se"].values()), rtol=1e-4)
    names = [f"disp_{name}" for name in reference["fixef_disp"]]
    np.testing.assert_allclose(fit.family_parameters[names].to_numpy(), list(reference["fixef_disp"].values()),
                               rtol=1e-4)
    np.testing.assert_allclose(fit.family_parameters_se[names].to_numpy(), list(reference["fixef_disp_se"].values()),
                               rtol=1e-3)
    assert fit.varcorr["sdcor"].iloc[0] == pytest.approx(reference["varcorr"][0]["sdcor"], rel=1e-3)
    assert fit.aic == pytest.approx(reference["AIC"], rel=1e-8)
    assert "Dispersion model:" in fit.summary()
    one = tm.glmer(reference["formula"], frame, family="negative_binomial", dispformula="~1", verbose=False)
    assert one.family_parameters.index.tolist() == ["size"]  # glmmTMB's default: one dispersion
    with pytest.raises(tm.DataError, match="estimated dispersion"):
        tm.glmer(reference["formula"], frame, family="poisson", dispformula="~mined", verbose=False)


def test_prior_weights_multiply_the_log_density():
    """glmmTMB's weights: a weight of 2 is the row counted twice (the fit equals that of the duplicated data)."""
    sleep = tm.datasets.load("sleepstudy")
    weights = np.where(np.arange(len(sleep)) % 2, 2.0, 1.0)
    weighted = tm.glmer("Reaction ~ Days + (1 | Subject)", sleep, family="Gamma", link="log", weights=weights,
                        verbose=False)
    doubled = tm.glmer("Reaction ~ Days + (1 | Subject)", pd.concat([sleep, sleep.iloc[1::2]], ignore_index=True),
                       family="Gamma", link="log", verbose=False)
    assert weighted.loglik == pytest.approx(doubled.loglik, rel=1e-10)
    np.testing.assert_allclose(weighted.fixef.to_numpy(), doubled.fixef.to_numpy(), rtol=1e-7)
    assert weighted.family_parameters["dispersion"] == pytest.approx(doubled.family_parameters["dispersion"], rel=1e-6)


def test_a_structured_covariance_with_a_family():
    """cs over two columns is the unstructured 2 x 2 covariance: the same maximum as glmmTMB's us fit."""
    reference, frame = load("sleep_gamma_log")
    fit = tm.glmer("Reaction ~ Days + cs(1 + Days | Subject)", frame, family="Gamma", link="log", verbose=False)
    assert fit.loglik == pytest.approx(reference["logLik"], rel=1e-9)


def test_zero_inflation_and_a_dispersion_model_together():
    """glmmTMB's ziformula and dispformula in one fit (tools/zi_disp_reference.R): the log-likelihood equals
    glmmTMB's Newton-polished objective; its reported estimates are nlminb's (max|grad| 4e-5), hence 1e-3."""
    reference = json.loads((REFERENCES / "sal_zinb2_disp.json").read_text())
    _, frame = load("sal_nb2")
    fit = tm.glmer(reference["formula"], frame, family="negative_binomial", ziformula=reference["ziformula"],
                   dispformula=reference["dispformula"], verbose=False)
    assert fit.loglik == pytest.approx(-reference["polished_objective"], rel=1e-9)
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(reference["fixef"].values()), rtol=1e-4)
    for prefix, key in (("zi_", "fixef_zi"), ("disp_", "fixef_disp")):
        names = [prefix + name for name in reference[key]]
        np.testing.assert_allclose(fit.family_parameters[names].to_numpy(), list(reference[key].values()), rtol=1e-3)
        np.testing.assert_allclose(fit.family_parameters_se[names].to_numpy(),
                                   list(reference[key + "_se"].values()), rtol=1e-3)
    assert fit.varcorr["sdcor"].iloc[0] == pytest.approx(reference["sdcor"], rel=1e-4)
    text = fit.summary()
    assert text.index("Zero-inflation model:") < text.index("Dispersion model:")


def _families_at_known_parameters():
    zi = tm.families.ZeroInflated(NegativeBinomial(size=2.0), np.ones((4, 1)), ["(Intercept)"]).with_working(
        np.array([-1.0]))
    return [NegativeBinomial(size=2.0), tm.families.NegativeBinomial1(dispersion=0.7),
            Gamma(link="log", dispersion=0.3), tm.families.InverseGaussian(link="log", dispersion=0.05),
            tm.families.Gaussian(link="log", dispersion=4.0), tm.families.Beta(precision=6.0),
            Tweedie(dispersion=1.3, power=1.4), zi]


@pytest.mark.parametrize("family", _families_at_known_parameters(), ids=lambda f: f.name)
def test_sampling_has_the_familys_mean_and_variance(family):
    """simulate and the bootstrap draw from Family.sample: its draws have mean E[y] and variance Var(y)."""
    mu = np.array([0.3, 0.5, 0.7, 0.4]) if family.name == "beta" else np.array([0.5, 2.0, 6.0, 1.0])
    rng = np.random.default_rng(11)
    draws = np.stack([family.sample(mu, np.ones(4), rng) for _ in range(40_000)])
    np.testing.assert_allclose(draws.mean(axis=0), family.response_mean(mu), rtol=0.02)
    np.testing.assert_allclose(draws.var(axis=0), family.variance(mu), rtol=0.05)


@pytest.mark.parametrize("family", [f for f in _families_at_known_parameters()
                                    if f.name in ("negative_binomial", "Gamma", "inverse.gaussian", "gaussian", "tweedie")],
                         ids=lambda f: f.name)
def test_deviance_residuals_are_the_scaled_log_likelihood_ratio(family):
    """Each closed-form deviance residual (the families that write their own) is 2 (log p(y | y) - log p(y | mu)),
    times the dispersion for those whose R deviance leaves it out (Gamma, inverse Gaussian, Gaussian, Tweedie)."""
    if family.name.startswith("negative"):
        y = np.array([1.0, 3.0, 8.0])
    else:
        y = np.array([0.4, 2.5, 7.0])
    mu, prior = np.array([0.9, 2.0, 5.5]), np.ones(3)
    ratio = 2 * (family.log_density(y, family.saturated_mean(y), prior) - family.log_density(y, mu, prior))
    scale = family.parameter("dispersion") if family.name in ("Gamma", "inverse.gaussian", "gaussian", "tweedie") else 1.0
    np.testing.assert_allclose(family.deviance_residuals(y, mu, prior), scale * ratio, rtol=1e-10)


@pytest.mark.parametrize("name", ["logit", "probit", "cloglog", "cauchit", "log", "identity", "inverse", "sqrt",
                                  "1/mu^2"])
def test_links_invert_and_differentiate(name):
    """Every link: g(g^-1(eta)) = eta, and d mu / d eta, d^2 mu / d eta^2 equal central quotients of g^-1."""
    from tfmixed.families import Link

    link = Link(name)
    eta = {"inverse": np.array([0.2, 0.7, 2.0]), "1/mu^2": np.array([0.2, 0.7, 2.0]),
           "sqrt": np.array([0.3, 1.2, 2.5])}.get(name, np.array([-1.5, 0.2, 1.1]))
    np.testing.assert_allclose(link.link(link.inverse(eta)), eta, rtol=1e-10, atol=1e-12)
    h = 1e-5
    np.testing.assert_allclose(link.mu_eta(eta), (link.inverse(eta + h) - link.inverse(eta - h)) / (2 * h), rtol=1e-6)
    np.testing.assert_allclose(link.mu_eta2(eta), (link.mu_eta(eta + h) - link.mu_eta(eta - h)) / (2 * h), rtol=1e-5,
                               atol=1e-9)
