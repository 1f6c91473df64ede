"""The average information of the profiled criterion: a positive semi-definite Hessian at the cost of a few solves.

For V = sigma^2 (Z Lambda Lambda' Z' + W^{-1}) and its derivatives V_m = dV / d theta_m, the REML deviance's
observed and expected information differ by terms with zero mean; their average is
H_mn = y'P V_m P V_n P y (Gilmour, Thompson & Cullis 1995, Biometrics 51:1440, the AI-REML algorithm; the same
quantity approximates the ML deviance's Hessian with beta profiled out). With the penalised residual r,
P y = r / sigma^2 and

    v_m = V_m P y = Z a_m,   a_m = Lambda_m u + Lambda Lambda_m' Z'W r,

so H needs P applied to the m vectors v_m: one solve of the mixed model equations per theta parameter, with
the factor already at hand. Profiling sigma^2 out (the Schur complement of H over (theta, sigma^2)) gives the
profiled criterion's approximate Hessian

    H~ = (dof / r^2) [V'P0 V - (V'r)(V'r)' / r^2],   P0 = sigma^2 P,

which is positive semi-definite by construction. Everything comes from the cross-products, so it costs no
pass over the rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .covariance import lambda_matrix_times, lower_indices
from .criterion import FactorMembers


class AverageInformation(FactorMembers):
    """Mixed into an exact kernel's factor that provides ``problem`` (``cross_products``, ``terms``),
    ``factors``, ``spherical_effects()``, ``u_to_b(u)``, ``solve()``, ``pwrss``, ``dof(reml)`` and
    ``solve_equations(rhs)``
    (Omega^{-1} rhs over [u | beta] in spherical coordinates)."""

    if TYPE_CHECKING:  # provided by the factor
        def u_to_b(self, u: np.ndarray) -> np.ndarray: ...

        def solve(self) -> tuple[np.ndarray, np.ndarray]: ...

        def solve_equations(self, rhs: np.ndarray) -> np.ndarray: ...

    def average_information(self, reml: bool) -> np.ndarray:
        """The profiled criterion's average-information Hessian in theta (see the module docstring).

        >>> from tfmixed import datasets, build_design
        >>> from tfmixed.kernels.pls import PLSProblem
        >>> d = build_design("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"))
        >>> factor = PLSProblem(d.cross_products()).factorize([np.array([[0.97, 0.0], [0.02, 0.23]])])
        >>> bool(np.all(np.linalg.eigvalsh(factor.average_information(reml=True)) > 0))
        True
        """
        A, residual_z, gram_z, gram_x = self._information_directions()
        levels = [term.n_levels for term in self.problem.terms]
        rhs = np.vstack([lambda_matrix_times(gram_z, self.factors, levels, transpose=True), gram_x])
        projected = A.T @ gram_z - rhs.T @ self.solve_equations(rhs)
        along = A.T @ residual_z  # V'r
        r2 = self.pwrss
        H = self.dof(reml) / r2 * (projected - np.outer(along, along) / r2)
        return (H + H.T) / 2

    def _information_directions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(A, Z'W r, Z'WZ A, X'WZ A) with A the q x m matrix of a_m: two products with Z'WZ, since A needs
        Z'W r = Z'W y~ - Z'WX beta - Z'WZ b first."""
        cp = self.problem.cross_products
        u = self.spherical_effects()
        beta, _ = self.solve()
        shifted_beta = beta - cp.shift if cp.shift.size else beta
        z_response = cp.xy_z()
        residual_z = z_response[-1] - z_response[:-1].T @ shifted_beta
        residual_z -= cp.gram_times(self.u_to_b(u))[0][:, 0]
        columns, offset = [], 0
        for term, T in zip(self.problem.terms, self.factors):
            U = u[offset : offset + term.q].reshape(term.n_levels, term.n_cols)
            R = residual_z[offset : offset + term.q].reshape(term.n_levels, term.n_cols)
            for a, b in zip(*lower_indices(term.n_cols)):
                # per level: E_ab u_l + T E_ab' R_l = e_a u_l[b] + T[:, b] R_l[a]
                block = np.outer(R[:, a], T[:, b])
                block[:, a] += U[:, b]
                column = np.zeros(u.size)
                column[offset : offset + term.q] = block.ravel()
                columns.append(column)
            offset += term.q
        A = np.column_stack(columns)
        return (A, residual_z, *cp.gram_times(A))
