"""Kenward and Roger's (1997) small-sample F tests for fixed effects of a REML fit (pbkrtest, as lmerTest calls it).

With Sigma = sum_t Z_t (I (x) G_t) Z_t' + sigma^2 W^{-1} linear in the covariance parameters psi (each element of
each G_t's lower triangle, then sigma^2), Sigma_r = d Sigma / d psi_r and Phi = (X'Sigma^{-1}X)^{-1}:

    P_r = -X'Sigma^{-1} Sigma_r Sigma^{-1}X,   Q_rs = X'Sigma^{-1} Sigma_r Sigma^{-1} Sigma_s Sigma^{-1}X,
    W = 2 [tr(Pi Sigma_r Pi Sigma_s)]^{-1}  (Pi = Sigma^{-1} - Sigma^{-1}X Phi X'Sigma^{-1}),
    Phi_A = Phi + 2 Phi [sum_rs W_rs (Q_rs - P_r Phi P_s)] Phi.

For a hypothesis L beta = 0 of rank l, A1 and A2 (sums over W of traces with Theta = L'(L Phi L')^{-1} L) give
the scaling lambda and the denominator df m of F* = lambda (L beta)'(L Phi_A L')^{-1}(L beta) / l ~ F(l, m).
The computation is dense in the number of observations n (as pbkrtest's), so it is refused, with the memory it
would need, beyond the kernel's memory limit. Unlike pbkrtest, prior weights enter Sigma (sigma^2 W^{-1}).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp
from scipy import stats

from ..errors import DataError, MemoryLimitError

#: dense n x n matrices held besides one Sigma_r Sigma^{-1} per covariance parameter (Sigma^{-1}, two temporaries)
DENSE_COPIES = 3


@dataclass
class KenwardRoger:
    """Phi, Phi_A, the P_r and W of a REML fit; :meth:`test` gives F, df and scaling for a contrast matrix."""

    Phi: np.ndarray
    Phi_A: np.ndarray
    P: list[np.ndarray]
    W: np.ndarray

    @classmethod
    def of(cls, fit) -> "KenwardRoger":
        if not fit.reml:
            raise DataError("Kenward-Roger's method is only available for REML fits (refit with REML=True)")
        design = fit.design
        nonlinear = sorted({t.structure.code for t in design.terms if t.structure.covariance_basis() is None})
        if nonlinear:
            raise DataError(f"Kenward-Roger's method needs covariances linear in their parameters (pbkrtest's "
                            f"assumption); the {nonlinear} structure(s) are not: use ddf='Satterthwaite'")
        if not design.in_memory:
            raise DataError("Kenward-Roger needs the model's rows in memory (dense n x n matrices); this fit's data "
                            "are partitioned: use ddf='Satterthwaite'")
        n = design.nobs
        n_parameters = sum(len(t.structure.covariance_basis()) for t in design.terms) + 1
        needed = (DENSE_COPIES + n_parameters) * 8 * n * n
        if needed > fit.problem.options.memory_limit:
            raise MemoryLimitError(
                f"Kenward-Roger needs dense {n:,} x {n:,} matrices ({needed / 2**30:.1f} GiB; limit "
                f"{fit.problem.options.memory_limit / 2**30:.1f} GiB); use ddf='Satterthwaite'")
        residual = np.ones(n) if design.weights is None else 1.0 / design.weights
        derivatives = []  # (Z_t, E_r) or None for the residual term
        Sigma = np.diag(fit.sigma**2 * residual)
        for term, G in zip(design.terms, fit.covariance_matrices()):
            Z = term.z_matrix()
            Sigma += _sandwich(Z, G, term.n_levels)
            for E in term.structure.covariance_basis():
                derivatives.append((Z, E, term.n_levels))
        chol = la.cho_factor(Sigma, lower=True, overwrite_a=True, check_finite=False)
        Sigma_inv = la.cho_solve(chol, np.eye(n), check_finite=False)
        del Sigma, chol
        X = design.X
        SiX = Sigma_inv @ X
        Phi = np.linalg.inv(X.T @ SiX)
        H = [_times_sigma_inverse(d, Sigma_inv) for d in derivatives] + [residual[:, None] * Sigma_inv]
        O = [Hr @ X for Hr in H]
        P = [-(Or.T @ SiX) for Or in O]
        P = [(Pr + Pr.T) / 2 for Pr in P]
        m = len(H)
        Q = {(r, s): O[r].T @ Sigma_inv @ O[s] for r in range(m) for s in range(r, m)}
        information = np.empty((m, m))
        for r in range(m):
            for s in range(r, m):
                trace = float(np.sum(H[r].T * H[s]))
                information[r, s] = information[s, r] = (
                    trace - 2.0 * float(np.sum(Phi * Q[r, s])) + float(np.sum((Phi @ P[r]) * (P[s] @ Phi))))
        eigenvalues = np.linalg.eigvalsh(information)
        W = 2.0 * (np.linalg.inv(information) if np.min(np.abs(eigenvalues)) > 1e-10 else np.linalg.pinv(information))
        U = np.zeros_like(Phi)
        for r in range(m):
            for s in range(m):
                Qrs = Q[r, s] if r <= s else Q[s, r].T
                U += W[r, s] * (Qrs - P[r] @ Phi @ P[s])
        return cls(Phi, Phi + 2.0 * Phi @ U @ Phi, P, W)

    def test(self, L: np.ndarray, beta: np.ndarray) -> dict:
        """ndf, ddf, the unscaled Wald F (with Phi_A), the scaling lambda and the scaled F of L beta = 0."""
        L = np.atleast_2d(L)
        Phi = self.Phi
        Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
        A1 = A2 = 0.0
        TP = [Theta @ Phi @ Pr @ Phi for Pr in self.P]
        for i in range(len(TP)):
            for j in range(i, len(TP)):
                weight = (1.0 if i == j else 2.0) * self.W[i, j]
                A1 += weight * np.trace(TP[i]) * np.trace(TP[j])
                A2 += weight * float(np.sum(TP[i] * TP[j].T))
        q = np.linalg.matrix_rank(L)
        B = (A1 + 6.0 * A2) / (2.0 * q)
        g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
        denominator = 3 * q + 2 * (1 - g)
        c1, c2, c3 = g / denominator, (q - g) / denominator, (q + 2 - g) / denominator
        V0, V1, V2 = 1 + c1 * B, 1 - c2 * B, 1 - c3 * B
        V0 = 0.0 if abs(V0) < 1e-10 else V0
        rho = (((1 - A2 / q) / V1) if abs(V1) >= 1e-14 else 0.0) ** 2 * V0 / (q * V2)
        ddf = 4 + (q + 2) / (q * rho - 1)
        scaling = 1.0 if abs(ddf - 2) < 1e-2 else ddf * (1 - A2 / q) / (ddf - 2)
        Lb = L @ beta
        unscaled = float(Lb @ np.linalg.solve(L @ self.Phi_A @ L.T, Lb)) / q
        return {"ndf": int(q), "ddf": float(ddf), "F_unscaled": unscaled, "scaling": float(scaling),
                "F": scaling * unscaled, "p": float(stats.f.sf(scaling * unscaled, q, ddf))}

    def coefficient_df(self, L: np.ndarray) -> np.ndarray:
        """Kenward-Roger df of each row of L as a one-dimensional contrast (pbkrtest's Lb_ddf)."""
        return np.array([self.test(row[None, :], np.zeros(row.size))["ddf"] for row in np.atleast_2d(L)])


def _sandwich(Z, G: np.ndarray, levels: int) -> np.ndarray:
    """Z (I_levels (x) G) Z' as a dense n x n array."""
    ZG = (Z @ _kron_identity(G, levels))
    return np.asarray((ZG @ Z.T).todense())


def _kron_identity(G: np.ndarray, levels: int):
    return sp.kron(sp.identity(levels, format="csr"), sp.csr_matrix(G), format="csr")


def _times_sigma_inverse(derivative, Sigma_inv: np.ndarray) -> np.ndarray:
    """Sigma_r Sigma^{-1} = Z (I (x) E_r) (Z' Sigma^{-1}), dense n x n."""
    Z, E, levels = derivative
    return np.asarray(Z @ (_kron_identity(E, levels) @ (Z.T @ Sigma_inv)))
