"""``lmer``: lme4's linear mixed models, from formula to fitted model.

The pipeline is formula -> design (:func:`tfmixed.design.build_design`) -> penalised least squares problem
(:class:`tfmixed.kernels.pls.PLSProblem`) -> estimator (:func:`tfmixed.estimators.profiled.fit_profiled`)
-> result (:class:`LmerFit`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .design import Design, build_design
from .errors import ConvergenceWarning, SingularFitWarning
from .estimators.profiled import fit_profiled
from .kernels.pls import PLSProblem, TermLayout
from .results import LmerFit


def problem_from_design(design: Design) -> PLSProblem:
    """The penalised least-squares problem (cross-products, patterns) of a design."""
    if not design.terms:
        from .errors import FormulaError

        raise FormulaError(
            f"formula {design.formula!r} has no random-effects term such as (1 | group); "
            "use tfmixed.LinearRegression for a fixed-effects-only model"
        )
    layouts = [TermLayout(term.factor.codes, term.values, term.n_levels) for term in design.terms]
    return PLSProblem(design.X, design.y, layouts)


def lmer(
    formula: str,
    data: Any,
    *,
    REML: bool = True,
    start: np.ndarray | None = None,
    missing: str = "raise",
    verbose: bool = True,
    max_iter: int = 1000,
) -> LmerFit:
    """Fit a linear mixed model by REML (default) or maximum likelihood, as lme4's ``lmer`` does.

    Minimises the profiled deviance over the relative covariance factor theta (Bates et al. 2015):
    y = X beta + Z b + e, b ~ N(0, sigma^2 Lambda Lambda'), e ~ N(0, sigma^2 I).

    Parameters: ``formula`` in lme4 syntax; ``data`` a DataFrame; ``REML``; ``start`` an initial theta
    (lme4's order); ``missing`` 'raise' or 'drop' for rows with missing values; ``verbose`` prints progress
    of long fits.

    >>> from tfmixed import datasets
    >>> fit = lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"), verbose=False)
    >>> round(fit.deviance, 3), fit.fixef.round(3).tolist()
    (1743.628, [251.405, 10.467])
    """
    design = build_design(formula, data, missing=missing)
    problem = problem_from_design(design)
    optimum = fit_profiled(problem, reml=REML, theta0=start, max_iter=max_iter, verbose=verbose)
    fit = LmerFit(design=design, problem=problem, optimum=optimum, reml=REML)
    if not optimum.converged:
        warnings.warn(f"lmer did not converge: {optimum.message}", ConvergenceWarning, stacklevel=2)
    if fit.is_singular:
        warnings.warn(
            "boundary (singular) fit: a variance is 0 or a correlation is +-1; see LmerFit.is_singular",
            SingularFitWarning,
            stacklevel=2,
        )
    return fit
