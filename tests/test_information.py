"""The average information (AI-REML) and the Newton stage of the profiled fit.

The kernel's H~ comes from the cross-products and one solve per parameter; here it is checked against the
textbook definition on dense n x n matrices, and against the Hessian at the optimum.
"""

import numpy as np
import pandas as pd
import pytest
from test_kernels import nested_design, synthetic_design

import tfmixed as tm
from tfmixed import build_design
from tfmixed.estimators.profiled import hessian_of_gradient
from tfmixed.kernels.covariance import factors_to_theta, lambda_matrix_times, theta_to_factors, lower_indices
from tfmixed.kernels.options import KernelOptions
from tfmixed.lmm import problem_from_design
from tfmixed.objective import LmmObjective


def random_theta(dims, seed=1):
    rng = np.random.default_rng(seed)
    return np.concatenate([factors_to_theta([np.tril(rng.uniform(0.2, 1.0, (k, k)))]) for k in dims])


def dense_lambda(design, factors):
    return lambda_matrix_times(np.eye(design.Z.shape[1]), factors, [term.n_levels for term in design.terms])


def textbook_information(design, theta, dims, reml):
    """y'P V_m P V_n P y over (theta, sigma^2) with dense n x n matrices (whitened by the prior weights), V_m by
    central differences (exact: V is quadratic in theta), then the Schur complement that profiles sigma^2 out."""
    w = np.ones(design.nobs) if design.weights is None else design.weights
    root = np.sqrt(w)
    Z, X, y = root[:, None] * design.Z.toarray(), root[:, None] * design.X, root * design.y

    def V0(t):
        ZL = Z @ dense_lambda(design, theta_to_factors(t, dims))
        return ZL @ ZL.T + np.eye(design.nobs)

    Vi = np.linalg.inv(V0(theta))
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    residual = y - X @ beta
    dof = design.nobs - (X.shape[1] if reml else 0)
    sigma2 = residual @ Vi @ residual / dof
    P = (Vi - Vi @ X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)) / sigma2
    derivatives = []
    for m in range(theta.size):
        h = np.zeros_like(theta)
        h[m] = 1e-3
        derivatives.append(sigma2 * (V0(theta + h) - V0(theta - h)) / 2e-3)
    derivatives.append(V0(theta))  # dV / d sigma^2
    Py = P @ y
    directions = np.column_stack([D @ Py for D in derivatives])
    H = directions.T @ P @ directions
    m = theta.size
    return H[:m, :m] - np.outer(H[:m, m], H[m, :m]) / H[m, m]


@pytest.mark.parametrize("formula", [
    "y ~ x + (1 + x | g) + (1 + x + z | h) + (1 | k)",
    "y ~ x + (0 + f | g) + (1 | h)",
])
@pytest.mark.parametrize("reml", [True, False])
def test_average_information_is_the_textbook_definition(formula, reml):
    data = synthetic_design().iloc[:150].copy()
    data["w"] = np.random.default_rng(4).uniform(0.5, 2.0, len(data))
    design = build_design(formula, data, weights="w")
    problem = problem_from_design(design)
    theta = random_theta(problem.dims)
    ours = problem.factorize(theta_to_factors(theta, problem.dims)).average_information(reml)
    np.testing.assert_allclose(ours, textbook_information(design, theta, problem.dims, reml), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("strategy", ["dense", "bordered", "sparse"])
def test_solve_equations_matches_the_dense_system_on_every_rest_strategy(strategy):
    design = build_design("y ~ x + (1 | student) + (1 | klass) + (1 + x | school)", nested_design())
    problem = problem_from_design(design, KernelOptions(rest=strategy))
    assert problem.rest_strategy == strategy
    factors = theta_to_factors(random_theta(problem.dims), problem.dims)
    ZL = design.Z.toarray() @ dense_lambda(design, factors)
    A = np.column_stack([ZL, design.X])
    Omega = A.T @ A
    Omega[: ZL.shape[1], : ZL.shape[1]] += np.eye(ZL.shape[1])
    rhs = np.random.default_rng(2).normal(size=(Omega.shape[0], 3))
    np.testing.assert_allclose(problem.factorize(factors).solve_equations(rhs), np.linalg.solve(Omega, rhs),
                               rtol=1e-8, atol=1e-10)


def test_average_information_is_the_hessian_at_the_sleepstudy_optimum():
    design = build_design("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"))
    objective = LmmObjective(problem_from_design(design))
    theta = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False).theta
    # measured: agreement to 4 digits (the terms AI leaves out have mean zero and are small at the optimum)
    np.testing.assert_allclose(objective.average_information(theta), hessian_of_gradient(objective, theta),
                               rtol=2e-3, atol=0.05)


def test_the_data_part_of_the_gradient_is_the_information_directions():
    # d r^2 / d theta_m = -r'v_m: the AI directions and the analytic gradient describe the same derivative
    design = build_design("y ~ x + (1 + x | g) + (1 | h)", synthetic_design())
    problem = problem_from_design(design)
    factor = problem.factorize(theta_to_factors(random_theta(problem.dims), problem.dims))
    A, residual_z = factor._information_directions()
    np.testing.assert_allclose(-A.T @ residual_z, factor.gradient_parts(reml=True)[1], rtol=1e-9)


@pytest.mark.parametrize("name, most", [("sleepstudy_minus1", 30), ("Sitka_illscaled", 30), ("Spruce_illscaled_ml", 30)])
def test_the_newton_stage_reaches_the_tight_refit_on_ill_conditioned_models(name, most):
    from test_reference_set2 import fitted

    _, best, fit = fitted(name)
    assert fit.deviance <= best["deviance"] + 1e-7 * abs(best["deviance"])
    assert fit.optimum.message.startswith("Newton (average information)")
    assert fit.optimum.n_evaluations <= most
