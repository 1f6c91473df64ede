"""The fit record (MixedModels.jl's ``OptSummary``): where the optimisation started and ended, what it cost,
which stages ran and where each stopped, every tolerance used, the backend and the block strategies."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class OptSummary:
    """How a fit was reached. ``initial`` / ``final`` are theta (the covariance parameters, named by
    ``theta_names``); for a GLMM ``initial_beta`` / ``final_beta`` hold the fixed effects the optimiser moved with
    them (None for linear models, whose beta is profiled out). ``stages`` lists (name, evaluations, criterion
    after it, where it stopped); ``tolerances`` every tolerance and limit of the estimator; ``strategies`` the
    kernel's backend and block strategies.

    >>> import tfmixed as tm
    >>> fit = tm.lmer("Reaction ~ Days + (Days | Subject)", tm.datasets.load("sleepstudy"), verbose=False)
    >>> fit.optsum.initial.tolist(), fit.optsum.strategies["backend"], fit.optsum.converged
    ([1.0, 0.0, 1.0], 'exact', True)
    """

    method: str
    criterion_name: str
    theta_names: tuple[str, ...]
    initial: np.ndarray
    final: np.ndarray
    criterion: float
    evaluations: int
    seconds: float
    converged: bool
    message: str
    stages: pd.DataFrame
    tolerances: dict = field(default_factory=dict)
    strategies: dict = field(default_factory=dict)
    initial_beta: np.ndarray | None = None
    final_beta: np.ndarray | None = None
    #: a GLMM family's estimated parameters (natural scale: a negative binomial's size, a dispersion), by name
    family_names: tuple[str, ...] = ()
    initial_family: np.ndarray | None = None
    final_family: np.ndarray | None = None

    @classmethod
    def of(cls, optimum, *, criterion_name: str, theta_names: list[str], strategies: dict,
           n_theta: int | None = None, family_names: tuple[str, ...] = (),
           family_from_working=np.exp) -> "OptSummary":
        """The record of an estimator's result; ``n_theta`` and ``family_names`` split a GLMM's (theta, beta,
        log phi) vector."""
        n_theta = optimum.theta.size if n_theta is None else n_theta
        n_family = len(family_names)
        start = optimum.start if optimum.start is not None else np.full(optimum.theta.size, np.nan)
        stages = pd.DataFrame([(s.name, s.evaluations, s.criterion, s.message) for s in optimum.stages],
                              columns=["stage", "evaluations", "criterion", "stopped"])
        end = optimum.theta.size - n_family
        family = dict(family_names=tuple(family_names), initial_family=family_from_working(start[end:]),
                      final_family=family_from_working(optimum.theta[end:])) if n_family else {}
        start, final = start[:end], optimum.theta[:end]
        joint = final.size > n_theta
        return cls(
            method=optimum.method, criterion_name=criterion_name, theta_names=tuple(theta_names),
            initial=np.asarray(start[:n_theta], dtype=np.float64), final=final[:n_theta].copy(),
            criterion=float(optimum.criterion), evaluations=int(optimum.n_evaluations), seconds=float(optimum.seconds),
            converged=bool(optimum.converged), message=optimum.message, stages=stages,
            tolerances=dict(optimum.tolerances), strategies=dict(strategies),
            initial_beta=np.asarray(start[n_theta:], dtype=np.float64) if joint and start.size > n_theta else None,
            final_beta=final[n_theta:].copy() if joint else None, **family,
        )

    def __str__(self) -> str:
        lines = [f"Estimator: {self.method} ({self.criterion_name}); "
                 f"{'converged' if self.converged else 'NOT converged'}: {self.message}",
                 f"Criterion {self.criterion:.10g} after {self.evaluations} evaluations, {self.seconds:.3f} s",
                 "Backend: " + "; ".join(f"{key} {value}" for key, value in self.strategies.items())]
        table = pd.DataFrame({"initial": self.initial, "final": self.final}, index=list(self.theta_names))
        lines += ["", table.to_string(float_format=lambda v: f"{v:.6g}")]
        if self.final_beta is not None and self.initial_beta is not None:
            lines += ["", f"beta (optimised with theta): initial {np.round(self.initial_beta, 6).tolist()}, "
                          f"final {np.round(self.final_beta, 6).tolist()}"]
        if self.final_family is not None and self.initial_family is not None:
            lines += ["", "family parameters (optimised on the log or logit scale): " + ", ".join(
                f"{name} initial {a:.6g}, final {b:.6g}"
                for name, a, b in zip(self.family_names, self.initial_family, self.final_family))]
        if len(self.stages):
            lines += ["", self.stages.to_string(index=False, float_format=lambda v: f"{v:.10g}")]
        if self.tolerances:
            lines += ["", "Tolerances: " + ", ".join(f"{key} {value}" for key, value in self.tolerances.items())]
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython shows the text, not the dataclass repr
        printer.text(str(self))
