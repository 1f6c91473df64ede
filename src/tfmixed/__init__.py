"""tfmixed: empirical Bayes for TensorFlow 2.

Linear and generalised linear mixed models with lme4's numbers (:func:`lmer`, :func:`glmer`), the seed article's TensorFlow modules
(:class:`LinearRegression`, :class:`MixedModule`) and MacKay's empirical-Bayes loop (:func:`mackay`).
"""

from . import datasets
from .errors import (
    ConvergenceError,
    ConvergenceWarning,
    CovarianceCollapseWarning,
    DataError,
    FormulaError,
    MemoryLimitError,
    NewLevelError,
    NotFittedError,
    OptionalDependencyError,
    RankDeficiencyWarning,
    RankDeficientError,
    ShapeError,
    SingularCovarianceError,
    SingularFitWarning,
    TfmixedError,
    TfmixedWarning,
)
from .formula import parse_formula
from .design import build_design
from .cross_products import CrossProducts
from .kernels.options import KernelOptions
from .estimators.profiled import ProfiledOptions
from .levels import encode_levels
from .lmm import lmer
from .glmm import glmer
from .results import BootstrapResult, LmerFit, Profile
from .results.comparison import LikelihoodRatioTable, anova
from .results.glmm import GlmerFit
from .terms import RandomEffectsTerm

__version__ = "0.1.0"

# TensorFlow-backed objects load lazily: importing TensorFlow takes seconds and lmer does not need it.
_LAZY = {"LinearRegression": "linear", "MixedModule": "module", "mackay": "empirical_bayes", "MacKayResult": "empirical_bayes"}


def __getattr__(name: str):
    if name == "keras":  # a lazy submodule: tm.keras works without "import tfmixed.keras"
        from importlib import import_module

        return import_module(".keras", __name__)
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfmixed' has no attribute {name!r}")

__all__ = [
    "LinearRegression",
    "MacKayResult",
    "MixedModule",
    "mackay",
    "ConvergenceError",
    "ConvergenceWarning",
    "CovarianceCollapseWarning",
    "DataError",
    "FormulaError",
    "CrossProducts",
    "KernelOptions",
    "ProfiledOptions",
    "LmerFit",
    "LikelihoodRatioTable",
    "BootstrapResult",
    "Profile",
    "anova",
    "MemoryLimitError",
    "RandomEffectsTerm",
    "encode_levels",
    "NewLevelError",
    "NotFittedError",
    "OptionalDependencyError",
    "RankDeficiencyWarning",
    "RankDeficientError",
    "ShapeError",
    "SingularCovarianceError",
    "SingularFitWarning",
    "TfmixedError",
    "TfmixedWarning",
    "build_design",
    "datasets",
    "lmer",
    "glmer",
    "GlmerFit",
    "parse_formula",
]
