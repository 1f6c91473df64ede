"""tfmixed: empirical Bayes for TensorFlow 2.

Linear and generalised linear mixed models with lme4's numbers (:func:`lmer`, :func:`glmer`), the seed article's TensorFlow modules
(:class:`LinearRegression`, :class:`MixedModule`) and MacKay's empirical-Bayes loop (:func:`mackay`).
"""

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

__version__ = "0.1.0"

# Everything but the errors loads on first use: the CLI's --help should not wait for pandas, scipy and formulaic
# (about a second), and TensorFlow-backed objects take seconds more that lmer does not need.
_LAZY = {
    "parse_formula": "formula", "build_design": "design", "CrossProducts": "cross_products",
    "KernelOptions": "kernels.options", "ProfiledOptions": "estimators.profiled", "encode_levels": "levels",
    "lmer": "lmm", "glmer": "glmm", "BootstrapResult": "results", "LmerFit": "results", "Profile": "results",
    "LikelihoodRatioTable": "results.comparison", "anova": "results.comparison", "GlmerFit": "results.glmm",
    "RandomEffectsTerm": "terms", "LinearRegression": "linear", "MixedModule": "module", "mackay": "empirical_bayes",
    "MacKayResult": "empirical_bayes",
}
#: submodules reachable as attributes (tm.datasets, tm.families, tm.keras) without importing them by hand
_SUBMODULES = {"datasets", "families", "keras", "results", "design", "formula", "errors", "model_spec", "checks",
               "covariance_structures", "estimators", "kernels", "laplace", "objective", "partitioned", "validation"}


def __getattr__(name: str):
    from importlib import import_module

    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfmixed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)

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
