"""Empirical-Bayes regularisation for Keras 3 networks: per-group weight decay learned without validation.

* :class:`RandomEffects` — embeddings of high-cardinality categorical inputs (random intercepts, optionally
  random slopes on numeric inputs). Its L2 penalty per factor and column is lambda = sigma^2 / tau^2, added
  to the loss as lambda * ||E||^2 / n_train, so that with a mean-squared-error loss the training objective is
  the mixed model's penalised least squares divided by n.
* :class:`EmpiricalBayesDecay` — the same learned L2 penalty for an ordinary ``Dense`` kernel (one variance
  per layer), passed as ``kernel_regularizer``.
* :class:`EmpiricalBayes` — a callback that re-estimates sigma^2 and every tau^2 during ``model.fit`` from one
  streamed pass over the training rows per update: ``rule="quick_and_dirty"`` is the seed's MacKay loop;
  ``rule="corrected"`` is MacKay's (1992) evidence update with the number of well-determined parameters
  gamma = sum(1 - Var(w | y) / tau^2), the posterior variances taken from a Gauss-Newton (Laplace)
  linearisation: tfmixed's mixed-model kernel for the random effects jointly with the network's last linear
  layer, a diagonal Gauss-Newton curvature (random-sign probes) for penalised Dense kernels. For a network
  without hidden layers this is exactly the evidence update of a linear mixed model, whose fixed point is the
  REML estimate.

The pieces, one file each: :mod:`.layers`, :mod:`.training_rows` (the rows an update streams),
:mod:`.linearisation` (the compiled per-batch passes, split across ``tf.distribute`` replicas),
:mod:`.evidence` (the statistics of one pass and the gammas), :mod:`.callback`.

The learned values are written to the Keras logs (``eb_sigma2``, ``eb_tau2_<group>``, ``eb_lambda_<group>``:
History and, listed after this callback, TensorBoard) and, with ``log_dir``, to TensorBoard directly.
"""

from .callback import EmpiricalBayes
from .layers import EmpiricalBayesDecay, RandomEffects, check_codes, encode_levels

__all__ = ["EmpiricalBayes", "EmpiricalBayesDecay", "RandomEffects", "check_codes", "encode_levels"]
