"""Result objects of fitted mixed models, one file per job: estimates, likelihood, inference, printing,
prediction, history and plots."""

from __future__ import annotations

from ..objective import LmmObjective
from .bootstrap import BootstrapResult, Resampling
from .estimates import Estimates
from .inference import Inference
from .intervals import Intervals, Profile
from .likelihood import Likelihood
from .plots import History, Plots
from .prediction import Prediction
from .printing import Printing


class LmerFit(Estimates, Likelihood, Inference, Intervals, Prediction, Resampling, Plots, History, Printing):
    """A fitted linear mixed model (the analogue of lme4's ``merMod``).

    Attributes follow lme4's accessors: ``fixef``, ``fixef_se``, ``vcov_beta``, ``coef_table``, ``theta``,
    ``sigma``, ``varcorr``, ``ranef``, ``ranef_condvar``, ``fitted``, ``residuals``, ``loglik``,
    ``deviance``, ``aic``, ``bic``, ``nobs``, ``ngroups``, ``is_singular``, ``converged``.
    """

    objective: LmmObjective


__all__ = ["BootstrapResult", "LmerFit", "Profile"]
