# Helpers shared by the GLMM reference scripts (source()d by them; not run on its own).

# lme4's Laplace criterion with log|L|^2 at the IRLS weights of the mode itself: lme4's own devfun takes the
# determinant at the previous PIRLS iterate's weights, and its Hessian keeps that bias even at tolPwrss = 1e-12
# (a warm-started PIRLS from a neighbouring point stops after one step, with the neighbour's weights).
laplace_at_mode_weights <- function(devfun, Zt) function(pars) {
  devfun(pars)
  resp <- environment(devfun)$resp; pp <- environment(devfun)$pp
  A <- tcrossprod(pp$Lambdat %*% Zt %*% Diagonal(x = resp$sqrtXwt)) + Diagonal(nrow(pp$Lambdat))
  resp$aic() + sum(pp$u(1)^2) + as.numeric(determinant(A, logarithm = TRUE)$modulus)
}

# The Hessian of f at p by central differences with steps delta.
central_hessian <- function(f, p, delta) {
  n <- length(p); H <- matrix(0, n, n); e <- diag(delta, n)
  for (i in 1:n) for (j in 1:i) {
    H[i, j] <- H[j, i] <- (f(p + e[, i] + e[, j]) - f(p + e[, i] - e[, j]) - f(p - e[, i] + e[, j]) + f(p - e[, i] - e[, j])) /
      (4 * delta[i] * delta[j])
  }
  H
}
