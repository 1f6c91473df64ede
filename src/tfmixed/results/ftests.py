"""F tests of fixed-effect terms (lmerTest's ``anova(fit, type = 3 | 1, ddf = ...)``).

Each term's hypothesis is a contrast matrix L over the coefficients: type I rows of the unit Doolittle factor of
X'X (sequential sums of squares), type III lmerTest's construction (for treatment contrasts: the full-dummy
coding of every term mapped onto X, each term orthogonalised against the terms that contain it). A term's F
statistic is (L beta)'(L V L')^{-1}(L beta) / q with q the rank of L V L'; its denominator df are Satterthwaite's
(per eigen-direction of L V L', combined as lmerTest's get_Fstat_ddf) or Kenward-Roger's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..model_spec import R_FUNCTIONS, lme4_name
from ..errors import DataError

DDF_METHODS = ("Satterthwaite", "Kenward-Roger")
_TREATMENT_LEVEL = re.compile(r"\[T\.([^\]]*)\]")


@dataclass(frozen=True)
class FixedTerm:
    """One term of the fixed part: R's label, its columns of the fit's X, its variables and which are numeric."""

    label: str
    formulaic_term: str
    columns: tuple[int, ...]
    variables: frozenset
    numeric: frozenset


def fixed_terms(design) -> list[FixedTerm]:
    """The fixed-effect terms of a design (the intercept excluded), with their columns after aliased ones went."""
    spec = design.fixed_spec
    kept = np.arange(design.n_fixed) if design.kept_columns is None else np.asarray(design.kept_columns)
    position = {int(j): i for i, j in enumerate(kept)}
    kinds = {expr: getattr(kind, "value", kind) for expr, (kind, _) in spec.encoder_state.items()}
    out = []
    for term, indices in spec.term_indices.items():
        name = str(term)
        if name == "1":
            continue
        columns = tuple(position[j] for j in indices if j in position)
        variables = frozenset(str(factor) for factor in term.factors)
        numeric = frozenset(v for v in variables if kinds.get(v) != "categorical")
        out.append(FixedTerm(lme4_name(name, design.fixed_renames), name, columns, variables, numeric))
    return out


def _contains(inner: FixedTerm, outer: FixedTerm) -> bool:
    """lmerTest's containment: outer has every variable of inner and more, and the same numeric ones."""
    return inner.variables < outer.variables and inner.numeric == outer.numeric


def type1_contrasts(design, terms: list[FixedTerm]) -> dict[str, np.ndarray]:
    """Rows of L' (X'X = L D L', L unit lower triangular: Doolittle's factor) for each term's columns."""
    X = design.X
    C = np.linalg.cholesky(X.T @ X)
    unit = (C / np.diag(C)[None, :]).T
    unit[np.abs(unit) < 1e-6] = 0.0  # lmerTest's doolittle() zeroes entries below 1e-6
    return {term.label: unit[list(term.columns)] for term in terms}


def type3_contrasts(design, terms: list[FixedTerm]) -> dict[str, np.ndarray]:
    """lmerTest's type III contrasts: identity rows when no term contains another, else its construction."""
    p = design.n_fixed
    if not any(_contains(a, b) for a in terms for b in terms):
        return {term.label: np.eye(p)[list(term.columns)] for term in terms}
    if design.frame is None:
        raise DataError("type III contrasts of a model with interactions need the model frame, which this fit lacks")
    names, pieces = [], []
    if "(Intercept)" in design.fixed_names:
        names.append("(Intercept)")
        pieces.append(np.ones((design.nobs, 1)))
    from formulaic import model_matrix

    for term in terms:
        full = model_matrix(f"0 + {term.formulaic_term}", design.frame, context=R_FUNCTIONS)
        names += [_normalised(c) for c in full.columns]
        pieces.append(np.asarray(full, dtype=np.float64))
    full_dummy = np.hstack(pieces)
    L = (np.linalg.pinv(design.X) @ full_dummy).T  # rows: full-dummy columns, columns: X's
    L[np.abs(L) < 1e-10] = 0.0
    by_term = {term.label: term for term in terms}
    for term in sorted(terms, key=lambda t: len(t.variables), reverse=True):
        containing = [other for other in terms if _contains(term, other)]
        if containing:
            basis = L[:, [j for other in containing for j in other.columns]]
            target = L[:, list(term.columns)]
            coefficients, *_ = np.linalg.lstsq(basis, target, rcond=None)
            residual = target - basis @ coefficients
            residual[np.abs(residual) < 1e-10] = 0.0
            L[:, list(term.columns)] = residual
    x_names = [_normalised(name) for name in _formulaic_names(design)]
    rows = [names.index(name) for name in x_names]
    L = L[rows]
    out = {}
    for label, term in by_term.items():
        contrast = L[:, list(term.columns)].T
        out[label] = contrast[np.sum(np.abs(contrast), axis=1) > 1e-8]
    return out


def _formulaic_names(design) -> list[str]:
    columns = list(design.fixed_spec.column_names)
    if design.kept_columns is not None:
        columns = [columns[j] for j in design.kept_columns]
    return ["(Intercept)" if c == "Intercept" else c for c in columns]


def _normalised(name: str) -> str:
    """formulaic's treatment-coded name a[T.x] and its full-dummy name a[x] made the same."""
    return _TREATMENT_LEVEL.sub(r"[\1]", name)


def satterthwaite_ftest(fit, L: np.ndarray) -> tuple[float, int, float]:
    """(F, NumDF, DenDF) of L beta = 0 by lmerTest's contestMD."""
    V = fit.vcov_beta.to_numpy()
    eigenvalues, vectors = np.linalg.eigh(L @ V @ L.T)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    positive = eigenvalues > max(np.sqrt(np.finfo(float).eps) * eigenvalues[0], 0.0)
    q = int(np.sum(positive))
    if q == 0:
        return np.nan, 0, np.nan
    PtL = (vectors.T @ L)[:q]
    F = float(np.sum((PtL @ fit.fixef.to_numpy()) ** 2 / eigenvalues[:q]) / q)
    nu = fit.contrast_df(PtL)
    return F, q, _combined_df(nu)


def _combined_df(nu: np.ndarray) -> float:
    """lmerTest's get_Fstat_ddf: E = sum nu/(nu - 2), df = 2E/(E - q) (2 when any nu <= 2)."""
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < 1e-8):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2)))
    return 2 * E / (E - nu.size)


def anova_table(fit, type: int = 3, ddf: str = "Satterthwaite") -> pd.DataFrame:
    """Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F) per term, as lmerTest prints them (Sum Sq = F sigma^2 q,
    with KR's unscaled F)."""
    if type not in (1, 3):
        raise DataError(f"type must be 1 or 3, got {type!r}")
    if ddf not in DDF_METHODS:
        raise DataError(f"ddf must be one of {DDF_METHODS}, got {ddf!r}")
    design = fit.design
    terms = [term for term in fixed_terms(design) if term.columns]
    contrasts = (type3_contrasts if type == 3 else type1_contrasts)(design, terms)
    kr = fit.kenward_roger if ddf == "Kenward-Roger" else None
    sigma2 = fit.sigma**2
    rows = []
    for label, L in contrasts.items():
        if L.shape[0] == 0:
            continue
        if kr is None:
            F, q, df = satterthwaite_ftest(fit, L)
            mean_square = F * sigma2
        else:
            result = kr.test(L, fit.fixef.to_numpy())
            q, df, F, mean_square = result["ndf"], result["ddf"], result["F"], result["F_unscaled"] * sigma2
        rows.append((label, mean_square * q, mean_square, q, df, F, stats.f.sf(F, q, df)))
    return pd.DataFrame(rows, columns=["term", "Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]
                        ).set_index("term")
