"""Maximum likelihood and REML by minimising the profiled deviance over theta (lme4's approach).

beta and sigma^2 are profiled out analytically (:mod:`tfmixed.kernels.pls`), leaving a smooth function of the
few covariance parameters theta, minimised with bounds (diagonals of T_t >= 0) by L-BFGS-B with the analytic
gradient. A boundary optimum (a zero variance, as in Dyestuff2) is legal.

Convergence is judged without lme4's false alarms and without its early stops on badly scaled models: the
projected gradient is small, or else the Newton decrement g' H^{-1} g / 2 on the free parameters (the
criterion decrease still available, in criterion units, whatever the scale of theta) is. When it is not, the
search restarts in coordinates rescaled by the Hessian's diagonal and, failing that, runs scipy's COBYQA
(Powell's derivative-free quadratic models with bounds, a maintained successor of BOBYQA).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import cast

import numpy as np

from ..errors import DataError, TfmixedError
from .. import derivatives
from ..objective import LmmObjective, bounded_scale
from ..protocols import AverageInformationCriterion, Criterion
from ..progress import Progress
from .result import EstimatorResult, StageRecord
from .optimizer import minimize_bounded, minimize_derivative_free

@dataclass(frozen=True)
class ProfiledOptions:
    """Every tolerance and limit of :func:`fit_profiled`, with its default (recorded in the fit's ``optsum``).

    ``gradient_tol``: the accepted projected gradient, relative to the criterion (a loose value gives a cheap
    starting point, as for the GLMM's first stage). ``decrement_tol``: the criterion decrease g'H^{-1}g / 2 below
    which an optimum is accepted (criterion units). ``newton_decrement_tol``: where the Newton stage stops (its
    steps are cheap near the optimum, and a looser stop leaves the variances visibly off). ``max_damping_tries``:
    damped trials per Newton step (lambda = 0, 1e-2, ..., 1e6). ``newton_iterations``: Newton steps before L-BFGS-B
    takes over. ``max_log_step``: the longest step of a bounded parameter in log units (far from the optimum the
    average information can ask for changes of orders of magnitude). ``boundary_probes``: distances from a zero bound, relative
    to the largest |theta|, at which a boundary point is probed (at 1e-3 alone a collapsed fit passed as
    converged). ``evidence_steps``: evidence updates from lme4's start for models of scalar unstructured terms.
    ``bound_fraction``: the Newton stage hands over to L-BFGS-B once a step of the longest length takes a bounded
    parameter below this fraction of the largest |theta| (towards its bound, which log steps approach only
    geometrically).
    """

    gradient_tol: float = 1e-6
    decrement_tol: float = 1e-7
    newton_decrement_tol: float = 1e-12
    max_damping_tries: int = 10
    newton_iterations: int = 100
    max_log_step: float = float(np.log(10.0))
    boundary_probes: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    evidence_steps: int = 2
    bound_fraction: float = 1e-1

    def __post_init__(self):
        for name, value in (("gradient_tol", self.gradient_tol), ("decrement_tol", self.decrement_tol),
                            ("newton_decrement_tol", self.newton_decrement_tol), ("max_log_step", self.max_log_step),
                            ("bound_fraction", self.bound_fraction)):
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise DataError(f"ProfiledOptions.{name} must be a positive number, got {value!r}")
        for name, value, least in (("max_damping_tries", self.max_damping_tries, 2),
                                   ("newton_iterations", self.newton_iterations, 0),
                                   ("evidence_steps", self.evidence_steps, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise DataError(f"ProfiledOptions.{name} must be an integer of at least {least}, got {value!r}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _projected_gradient(theta, gradient, lower):
    at_bound = np.isfinite(lower) & (theta <= lower + 1e-10)
    return np.where(at_bound & (gradient >= 0), 0.0, gradient), at_bound


def hessian_of_gradient(objective: Criterion, theta: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """Symmetrised central differences of the analytic gradient (2 factorisations per theta), one-sided at a
    bound."""
    return derivatives.hessian_of_gradient(lambda point: objective.value_and_gradient(point)[1], theta,
                                           derivatives.relative_steps(theta, step), lower=objective.lower)


def newton_decrement(objective: Criterion, theta: np.ndarray,
                     gradient: np.ndarray | None = None) -> tuple[float, np.ndarray | None]:
    """(g' H^{-1} g / 2 over the free parameters, H); inf when H is not positive definite there. ``gradient``
    is g where the caller has it already."""
    if gradient is None:
        _, gradient = objective.value_and_gradient(theta)
    projected, at_bound = _projected_gradient(theta, gradient, objective.lower)
    free = ~(at_bound & (gradient >= 0))
    if not np.any(free):
        return 0.0, None
    H = hessian_of_gradient(objective, theta)
    Hf = H[np.ix_(free, free)]
    try:
        chol = np.linalg.cholesky(Hf)
    except np.linalg.LinAlgError:
        return np.inf, H
    step = np.linalg.solve(chol, projected[free])
    return float(step @ step / 2), H


def _secant_corrected(information, correction, secant):
    """information + correction, BFGS-updated to match the last step's gradient change (H s = y); the correction
    is dropped where it makes the matrix indefinite or the step's curvature is not positive."""
    hessian = information + correction
    try:
        np.linalg.cholesky(hessian)
    except np.linalg.LinAlgError:
        hessian = information.copy()
    if secant is None:
        return hessian
    s, y = secant
    curvature, hs = float(s @ y), hessian @ s
    if curvature <= 1e-12 * np.linalg.norm(s) * np.linalg.norm(y) or s @ hs <= 0:
        return hessian
    return hessian - np.outer(hs, hs) / (s @ hs) + np.outer(y, y) / curvature


def _newton_direction(hessian, gradient, free):
    """-H_ff^{-1} g_f on the free parameters (0 elsewhere); None where H_ff is not positive definite."""
    try:
        chol = np.linalg.cholesky(hessian[np.ix_(free, free)])
    except np.linalg.LinAlgError:
        return None
    direction = np.zeros_like(gradient)
    direction[free] = -np.linalg.solve(chol.T, np.linalg.solve(chol, gradient[free]))
    return direction


class _LogModel:
    """The Newton model in phi, with theta_i = lower_i + exp(phi_i) on the bounded diagonals and theta_i = phi_i
    elsewhere: a step never reaches a bound, and an uncentred slope's theta can fall 100-fold in two steps.

    In phi the gradient is s g and the Hessian s H s plus the chain rule's second-order term s g on the
    diagonals, kept where positive (it keeps the model convex and shortens the log step of a diagonal whose
    criterion still falls towards its bound); s = d theta / d phi. A diagonal on its bound stays there.
    """

    def __init__(self, theta, gradient, hessian, lower, scalar, max_log_step):
        self.theta, self.lower, self.max_log_step = theta, lower, max_log_step
        self.bounded = np.isfinite(lower)
        self.scale = np.where(self.bounded, theta - np.where(self.bounded, lower, 0.0), 1.0)
        self.free = ~self.bounded | (self.scale > 0)
        self.gradient = self.scale * gradient
        self.hessian = self.scale[:, None] * hessian * self.scale[None, :]
        self.hessian[np.diag_indices(theta.size)] += np.where(self.bounded, np.maximum(self.gradient, 0.0), 0.0)
        self.direction = _newton_direction(self.hessian, self.gradient, self.free)
        # only a scalar term's variance is snapped to 0: there the criterion is even in theta (its derivative
        # vanishes), while a vector term's zero diagonal is a singular covariance better left to L-BFGS-B
        self.crossing = np.zeros(theta.size, dtype=bool)
        if np.any(scalar & self.free):
            linear = _newton_direction(hessian, gradient, self.free)  # the Newton step in theta itself
            if linear is not None:
                self.crossing = scalar & self.free & (theta + linear <= lower)

    def decrement(self) -> float | None:
        """-g' d / 2 in phi (the criterion decrease the model predicts); None where H is not positive definite."""
        return None if self.direction is None else -float(self.gradient @ self.direction) / 2

    def step(self, damping: float) -> tuple[np.ndarray, float]:
        """(theta after the damped step, 1e-4 times its predicted first-order change). A diagonal changes at
        most tenfold (the whole step shrinks, keeping its direction)."""
        direction = self.direction
        if damping:
            damped = self.hessian + damping * np.diag(np.diag(self.hessian))
            direction = _newton_direction(damped, self.gradient, self.free)
        longest = float(np.max(np.abs(direction[self.bounded]), initial=0.0))
        if longest > self.max_log_step:
            direction = direction * (self.max_log_step / longest)
        trial = np.where(self.bounded, self.theta, self.theta + direction)
        trial[self.bounded] = self.lower[self.bounded] + self.scale[self.bounded] * np.exp(direction[self.bounded])
        return trial, 1e-4 * float(self.gradient @ direction)

    def boundary_candidates(self, trial: np.ndarray) -> list[np.ndarray]:
        """Where the Newton step in theta takes scalar variances past 0: the trial with them a tenth of the way
        from 0, then with them at 0 (none elsewhere)."""
        if not np.any(self.crossing):
            return []
        inside, snapped = trial.copy(), trial.copy()
        inside[self.crossing] = self.lower[self.crossing] + 0.1 * (trial[self.crossing] - self.lower[self.crossing])
        snapped[self.crossing] = self.lower[self.crossing]
        return [inside, snapped]


class _Degenerate(Exception):
    """Raised inside an optimiser run to stop a search that is heading to theta -> infinity."""


class _Search:
    """Bookkeeping shared by the optimisers: every evaluation recorded, the best point kept."""

    def __init__(self, objective: Criterion, progress: Progress, options: ProfiledOptions):
        self.objective, self.progress, self.options = objective, progress, options
        self.history: list[tuple[np.ndarray, float]] = []
        #: None until the first evaluation is recorded
        self.best_theta: np.ndarray | None = None
        self.best_value = np.inf
        self._best_gradient: np.ndarray | None = None
        #: the Newton stage's last point and the criterion decrease its model still predicted there
        self.newton_point: tuple[np.ndarray, float] | None = None

    def newton_converged(self) -> bool:
        """Whether the Newton stage ended at the best point with a decrement below ``decrement_tol`` (its
        H is the average information with BFGS corrections: at the optimum, the Hessian to a few digits)."""
        if self.newton_point is None:
            return False
        theta, decrement = self.newton_point
        return (decrement <= self.options.decrement_tol and self.best_theta is not None
                and np.array_equal(theta, self.best_theta))

    def record(self, theta, value, gradient=None):
        if not self.history and not np.isfinite(value):
            raise TfmixedError(f"the deviance is not finite at the starting theta: {self.objective.diagnose(theta)}")
        self.history.append((theta.copy(), value))
        if value < self.best_value:
            self.best_theta, self.best_value = theta.copy(), value
            self._best_gradient = None if gradient is None else np.array(gradient, dtype=np.float64)
        self.progress.update(len(self.history), f"criterion {value:.6f}")
        if np.isfinite(value) and self.objective.is_degenerate(theta):
            raise _Degenerate

    def best_gradient(self) -> np.ndarray:
        """The gradient at the best point (kept from its evaluation where the optimiser computed one)."""
        if self._best_gradient is None:
            assert self.best_theta is not None  # asked for after the first evaluation
            self._best_gradient = np.asarray(self.objective.value_and_gradient(self.best_theta)[1], dtype=np.float64)
        return self._best_gradient

    def newton(self, start, max_iter):
        """Levenberg-Marquardt-damped Newton steps with H = H~ + D: the average information H~ (AI-REML: one
        solve per theta parameter with the factor at hand) plus a correction D kept by BFGS updates, so that H
        matches the gradient's change along the last step. H~ alone is the Hessian up to terms of mean zero; on
        badly conditioned models (a random slope without an intercept) it misses the Hessian by enough to make
        the plain AI iteration converge only linearly, and with prior weights it can oscillate.

        Steps are taken in log theta for the bounded diagonals (:class:`_LogModel`). lambda starts at 0 and grows
        tenfold while a step -(H + lambda diag H)^{-1} g fails to lower the criterion, shrinking again after
        successes. Where the model's step would take a scalar term's theta past 0, the point with it at 0 is
        tried too (a zero variance, as in Dyestuff2, is reached in one step instead of geometrically).
        Returns a message; the best point is the search's. Stops where no damping lowers the criterion (the
        quasi-Newton stages take over)."""
        objective = self.objective
        theta = start.copy()
        value, gradient = objective.value_and_gradient(theta)
        if not self.history or not np.array_equal(self.history[-1][0], theta):  # the evidence start's last point
            self.record(theta, value, gradient)
        correction, secant, damping = np.zeros((theta.size, theta.size)), None, 0.0
        path = [theta]  # the accepted points
        scalar = objective.even_parameters()
        options = self.options
        for _ in range(min(max_iter, options.newton_iterations)):
            # this stage runs where the criterion declares has_average_information
            information = cast(AverageInformationCriterion, objective).average_information(theta)
            if information is None:
                return "Newton (average information): not offered by this kernel"
            hessian = _secant_corrected(information, correction, secant)
            correction = hessian - information
            model = _LogModel(theta, gradient, hessian, objective.lower, scalar, options.max_log_step)
            decrement = model.decrement()
            if decrement is None:
                return "Newton (average information): information singular"
            self.newton_point = (theta.copy(), decrement)
            if decrement <= options.newton_decrement_tol:
                return "Newton (average information): decrement below tolerance"
            # within decrement_tol the criterion's rounding can hide the last decrease: no long damping search
            tries = 2 if decrement <= options.decrement_tol else options.max_damping_tries
            accepted = self._damped_step(model, value, damping, tries)
            if accepted is None and tries < options.max_damping_tries:
                return f"Newton (average information): decrement {decrement:.1e}, within the criterion's rounding"
            if accepted is None:
                return "Newton (average information): no damped step lowered the criterion"
            trial, trial_value, trial_gradient, damping = accepted
            secant = (trial - theta, trial_gradient - gradient)
            damping = damping / 10 if damping > 1e-3 else 0.0
            theta, value, gradient = trial, trial_value, trial_gradient
            path.append(theta)
            if self._heading_to_a_bound(path):
                return "Newton (average information): a bounded parameter approaches its bound; L-BFGS-B takes over"
        return "Newton (average information): iteration limit"

    def _heading_to_a_bound(self, path) -> bool:
        """Whether the last accepted step took a bounded parameter (a diagonal of T) down by nearly the longest
        log step allowed, to below ``bound_fraction`` of the largest |theta|: the model's minimum then lies
        further down, at the bound, which log steps approach only geometrically and L-BFGS-B's projection
        reaches in a few. A small interior optimum (an uncentred slope's theta) is approached by shorter steps
        and keeps the stage."""
        if len(path) < 2:
            return False
        lower = self.objective.lower
        bounded = np.isfinite(lower)
        before, after = path[-2][bounded] - lower[bounded], path[-1][bounded] - lower[bounded]
        longest_fall = np.exp(-0.9 * self.options.max_log_step)
        scale = bounded_scale(path[-1], lower)
        heading = (after > 0) & (after <= longest_fall * before) & (after < self.options.bound_fraction * scale)
        return bool(np.any(heading))

    def _damped_step(self, model, value, damping, tries):
        """(theta, criterion, gradient, lambda) of the first step that lowers the criterion, lambda growing
        tenfold from ``damping`` per failure (and trying a scalar variance at 0 where the model points past it);
        None after ``tries``."""
        for _ in range(tries):
            trial, expected = model.step(damping)
            trial_value = self._evaluate(trial)
            for candidate in model.boundary_candidates(trial):
                # the variance at 0, and a tenth of the way to the trial: 0 is taken only where it is lower than
                # both (a scalar term's criterion is even in its theta, so 0 is always stationary, but it is a
                # maximum along theta where the optimum is inside; a first step far from the optimum took one)
                candidate_value = self._evaluate(candidate)
                if candidate_value < trial_value:
                    trial, trial_value = candidate, candidate_value
            # a decrease below the criterion's rounding is not asked for (near the optimum the step is exact)
            if trial_value <= value + min(0.0, expected) + 10 * np.finfo(float).eps * abs(value):
                # the gradient only now: a rejected trial needs no inverse (where a boundary candidate was
                # evaluated after the trial and lost, the objective's cached factor is the candidate's, and the
                # trial is factored again)
                trial_value, trial_gradient = self.objective.value_and_gradient(trial)
                if np.array_equal(trial, self.best_theta):
                    self._best_gradient = np.array(trial_gradient, dtype=np.float64)
                return trial, trial_value, trial_gradient, damping
            damping = 1e-2 if damping == 0 else 10 * damping
        return None

    def _evaluate(self, theta) -> float:
        """The criterion at theta, recorded (no gradient: the caller asks for it where the step is taken)."""
        value = self.objective(theta)
        self.record(theta, value)
        return value

    def lbfgsb(self, start, scale, max_iter, ftol=1e-12):
        def recorded(theta):
            value, gradient = self.objective.value_and_gradient(theta)
            self.record(theta, value, gradient)
            return value, gradient

        result = minimize_bounded(recorded, start, self.objective.lower, scale=scale, max_iter=max_iter, ftol=ftol,
                                  maxls=50)
        return str(result.message)  # the best point is the search's, not necessarily the last iterate

    def cobyqa(self, start, scale, max_iter):
        """COBYQA from ``start``; returns scipy's result (the best point is the search's)."""
        def recorded(theta):
            value = self.objective(theta)
            self.record(theta, value)
            return value

        return minimize_derivative_free(recorded, start, self.objective.lower, scale=scale,
                                        max_evaluations=200 * start.size + max_iter)


def _boundary_probe(search, theta, value):
    """A theta left on or next to a zero bound (a scalar term's derivative is 0 there by symmetry), or with a
    correlation at +-1, may be a saddle: probe each such parameter from inside at the ``boundary_probes``
    distances and return the best point where it is lower (every probe is recorded)."""
    objective = search.objective
    scale = bounded_scale(theta, objective.lower)
    # within 1e-4 of the bound counts (what _clip_to_boundary would report as 0): L-BFGS-B leaves 1e-8, not 0
    at_bound = np.isfinite(objective.lower) & (theta - objective.lower < 1e-4 * scale)
    probes = []
    # one parameter at a time: an uncentred slope's theta lives 1e-4 below an intercept's, so moving them
    # together (the slope's variance then enormous) hid a collapsed fit's way out
    for index in np.flatnonzero(at_bound):
        for distance in search.options.boundary_probes:
            probe = theta.copy()
            probe[index] = objective.lower[index] + distance * scale
            probes.append(probe)
    # a correlation at +-1 sits at z -> infinity, where its gradient vanishes whether or not that is the optimum
    probes += objective.correlation_probes(theta, search.options.boundary_probes)
    best, best_value = None, value - 1e-8 * max(1.0, abs(value))
    for probe in probes:
        probe_value = objective(probe)
        search.record(probe, probe_value)
        if probe_value < best_value:
            best, best_value = probe, probe_value
    return best


def _clip_to_boundary(objective, theta, value):
    """Snap diagonal elements within rounding of 0 onto the boundary when that is no worse (lme4 reports 0)."""
    on_bound = np.isfinite(objective.lower) & (theta - objective.lower < 1e-4)
    if not np.any(on_bound):
        return theta, value
    snapped = theta.copy()
    snapped[on_bound] = objective.lower[on_bound]
    snapped_value = objective(snapped)
    if snapped_value <= value + 1e-10 * max(1.0, abs(value)):
        return snapped, snapped_value
    return theta, value


def _evidence_start(objective, search, theta):
    """Up to ``evidence_steps`` evidence updates (:meth:`LmmObjective.evidence_step`) from lme4's start, each kept
    only where it lowers the criterion."""
    value, gradient = objective.value_and_gradient(theta)
    search.record(theta, value, gradient)
    for _ in range(search.options.evidence_steps):
        try:
            step = objective.evidence_step(theta)
        except TfmixedError:
            return theta
        if step is None or not np.any(step):
            return theta
        trial = theta * np.exp(step)
        trial_value, trial_gradient = objective.value_and_gradient(trial)
        search.record(trial, trial_value, trial_gradient)
        if not trial_value < value:
            return theta
        theta, value = trial, trial_value
    return theta


def fit_profiled(objective: Criterion, *, start: np.ndarray | None = None, max_iter: int = 1000,
                 verbose: bool = False, method: str = "profiled", options: ProfiledOptions | None = None,
                 scale: np.ndarray | None = None) -> EstimatorResult:
    """Minimise the profiled REML criterion (or ML deviance) over theta.

    Any objective with the interface of :class:`~tfmixed.objective.LmmObjective` (``lower``, ``start``,
    ``label``, call, ``value_and_gradient``, ``is_degenerate``, ``diagnose`` and the declared capabilities
    ``has_average_information`` and ``has_evidence_step``) can be minimised: the GLMM's Laplace criterion over
    (theta, beta) is (:mod:`tfmixed.laplace`); ``method`` names the result. ``options`` holds every tolerance
    (:class:`ProfiledOptions`). ``scale`` (one positive number per parameter, such as approximate standard
    errors) preconditions the search: it runs in the coordinates params / scale. The result records each stage
    taken, its evaluations and where it stopped.

    >>> from tfmixed import datasets, build_design
    >>> from tfmixed.kernels.pls import PLSProblem
    >>> d = build_design("Yield ~ 1 + (1 | Batch)", datasets.load("Dyestuff"))
    >>> result = fit_profiled(LmmObjective(PLSProblem(d.cross_products())))
    >>> round(float(result.theta[0]), 4), [stage.name for stage in result.stages]
    (0.8483, ['evidence', 'newton'])
    """
    options = ProfiledOptions() if options is None else options
    theta = _checked_start(objective, start, max_iter)
    initial = theta.copy()
    progress = Progress(objective.label, verbose=verbose)
    started = time.perf_counter()
    search = _Search(objective, progress, options)
    stages: list[StageRecord] = []
    if start is None and objective.has_evidence_step:
        theta = _evidence_start(objective, search, theta)
        stages.append(StageRecord("evidence", len(search.history), search.best_value, "evidence updates from lme4's start"))
    scale = np.ones_like(theta) if scale is None else np.asarray(scale, dtype=np.float64) / np.max(scale)
    converged, status, message = _run_stages(search, theta, scale, max_iter, stages)
    theta, value = _clip_to_boundary(objective, search.best_theta, search.best_value)
    progress.finish(f"{len(search.history)} evaluations, criterion {value:.6f}")
    return EstimatorResult(
        method=method, theta=theta, criterion=value, converged=converged,
        status=status or ("converged" if converged else "not converged"), message=message,
        n_evaluations=len(search.history), seconds=time.perf_counter() - started, iterations=len(stages),
        history=search.history, start=initial, stages=tuple(stages), tolerances=options.as_dict(),
    )


def _checked_start(objective, start, max_iter) -> np.ndarray:
    lower = objective.lower
    theta = objective.start.copy() if start is None else np.asarray(start, dtype=np.float64).ravel()
    if theta.shape != lower.shape:
        raise TfmixedError(f"start must have {lower.size} theta values (lme4's order), got {theta.size}")
    if np.any(theta < lower):
        raise TfmixedError("start has a negative relative standard deviation (a diagonal theta below 0)")
    if max_iter < 1:
        raise TfmixedError(f"max_iter must be a positive number of iterations, got {max_iter}")
    return theta


#: the optimisers tried in turn, each from the best point so far, until one ends at a converged point
STAGES = ("newton", "lbfgsb", "lbfgsb", "rescaled", "cobyqa", "polish")


def _run_stages(search: _Search, theta, scale, max_iter, stages: list[StageRecord]):
    """Run the stages (the Newton stage where the objective declares an average information and
    ``newton_iterations`` allows it), appending a
    record of each; returns (converged, status, message)."""
    objective, options = search.objective, search.options
    message, decrement = "", np.nan
    for stage in STAGES:
        if stage == "newton" and (not objective.has_average_information or options.newton_iterations == 0):
            continue
        before = len(search.history)
        start_here = search.best_theta if search.history else theta
        try:
            if stage == "newton":
                message = search.newton(start_here, max_iter)
            elif stage == "cobyqa":
                message = f"COBYQA: {search.cobyqa(start_here, scale, max_iter).message}"
            else:
                message = search.lbfgsb(start_here, scale, max_iter, ftol=options.gradient_tol**2)
            # a theta left on a zero bound may be a saddle (a scalar term's derivative is 0 there): probe inside
            probed = _boundary_probe(search, search.best_theta, search.best_value) is not None
        except _Degenerate:
            stages.append(StageRecord(stage, len(search.history) - before, search.best_value, "degenerate"))
            return False, "degenerate", DEGENERATE_MESSAGE
        stages.append(StageRecord(stage, len(search.history) - before, search.best_value,
                                  message + ("; a boundary probe found a lower point" if probed else "")))
        if probed:
            continue  # the next stage starts from the search's best point, the probe
        if stage == "newton" and search.newton_converged():
            return True, None, message
        best = search.best_theta
        assert best is not None  # the stage has evaluated the criterion
        gradient = search.best_gradient()
        projected, _ = _projected_gradient(best, gradient, objective.lower)
        if np.max(np.abs(projected), initial=0.0) <= options.gradient_tol * max(1.0, abs(search.best_value)):
            return True, None, message
        decrement, H = newton_decrement(objective, best, gradient)
        if decrement <= options.decrement_tol:
            return True, None, message
        if H is not None and stage in ("lbfgsb", "rescaled"):
            diagonal = np.abs(np.diag(H))
            scale = np.where(diagonal > 0, 1.0 / np.sqrt(np.maximum(diagonal, 1e-300)), 1.0)
            scale = scale / np.max(scale)
    return False, None, f"{message}; Newton decrement {decrement:.3g} after {len(stages)} optimiser runs"


DEGENERATE_MESSAGE = ("the penalised residual sum of squares vanishes as theta grows: the response is (nearly) "
                      "constant within the levels of the grouping factors, or the random effects reproduce it "
                      "exactly, so the likelihood has no maximum and the variance components are meaningless")


def fit_near(objective: LmmObjective, start: np.ndarray, inverse_hessian: np.ndarray, *, max_iter: int = 50,
             decrement_tol: float = 1e-10, method: str = "profiled") -> EstimatorResult:
    """Minimise the criterion from a start close to the optimum, given an approximate inverse Hessian there
    (a bootstrap replicate near the original fit): Newton steps -B g with backtracking and BFGS updates of B.

    The criterion depends on T_t only through T_t T_t', so the iteration may run without bounds and flip column
    signs at the end. It stops when g'Bg / 2 (the criterion decrease still expected) is below ``decrement_tol``;
    where that does not happen, or the optimum lies on a boundary (a zero variance), :func:`fit_profiled` takes
    over from the best point (fewer evaluations than L-BFGS-B on bootstrap replicates, docs/inference.md).
    """
    started = time.perf_counter()
    theta = np.asarray(start, dtype=np.float64).copy()
    value, gradient = objective.value_and_gradient(theta)
    history, B = [(theta.copy(), value)], np.array(inverse_hessian, dtype=np.float64)
    converged = False
    for _ in range(max_iter):
        direction = -B @ gradient
        if not np.isfinite(value) or -gradient @ direction / 2 < decrement_tol:
            converged = np.isfinite(value) and gradient @ B @ gradient >= 0
            break
        step = 1.0
        while True:
            trial = theta + step * direction
            trial_value, trial_gradient = objective.value_and_gradient(trial)
            history.append((trial.copy(), trial_value))
            if trial_value <= value + 1e-4 * step * (gradient @ direction) or step < 1e-8:
                break
            step /= 2
        s, y = trial - theta, trial_gradient - gradient
        if s @ y > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            rho, identity = 1.0 / (s @ y), np.eye(theta.size)
            B = (identity - rho * np.outer(s, y)) @ B @ (identity - rho * np.outer(y, s)) + rho * np.outer(s, s)
        theta, value, gradient = trial, trial_value, trial_gradient
    canonical = objective.covariance.canonical(theta)
    if canonical is None or not converged or objective.is_singular(canonical):
        # a structure whose sign flips change the covariance (cs, toep) needs the bounded search
        return fit_profiled(objective, start=np.maximum(theta if canonical is None else canonical, objective.lower),
                            method=method)
    theta = canonical
    return EstimatorResult(method=method, theta=theta, criterion=objective(theta), converged=True, status="converged",
                           message=f"Newton decrement below {decrement_tol:g}", n_evaluations=len(history),
                           seconds=time.perf_counter() - started, iterations=1, history=history)
