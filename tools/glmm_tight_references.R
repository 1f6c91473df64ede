# lme4 refits of the shared glmer references with a tight PIRLS tolerance and a tight optimiser.
#
# Why: lme4 evaluates the Laplace criterion with log|L|^2 taken at the IRLS weights of the *previous* PIRLS
# iterate and stops PIRLS at a relative change of 1e-7 (glmerControl's tolPwrss). That moves its criterion by up
# to ~1e-5 relative and, since the Hessian of that criterion is what vcov() inverts, its standard errors by up
# to ~1%. With tolPwrss = 1e-12 the previous iterate is the mode to rounding, so lme4 then computes the exact
# Laplace (or AGQ) criterion; tfmixed's exact values are compared with these refits to 1e-6 / 1e-4.
#
#   Rscript tools/glmm_tight_references.R <shared reference dir> <output dir>
#
# Needs lme4 and jsonlite (Debian: r-cran-lme4 r-cran-jsonlite).

suppressMessages({ library(lme4); library(jsonlite) })
args <- commandArgs(trailingOnly = TRUE)
shared <- if (length(args) >= 1) args[1] else "../shared/reference"
out_dir <- if (length(args) >= 2) args[2] else "tests/reference/glmm"
dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)

read_case_data <- function(ref) {
  classes <- setNames(rep("character", length(ref$factor_columns)), ref$factor_columns)
  d <- read.csv(file.path(shared, ref$csv), colClasses = classes, na.strings = "NA")
  for (column in ref$factor_columns) d[[column]] <- factor(d[[column]], levels = sort(unique(d[[column]]), method = "radix"))
  d
}

script_dir <- dirname(normalizePath(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])))
source(file.path(script_dir, "laplace_helpers.R"))
exact_laplace <- laplace_at_mode_weights

tight <- glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-10, maxfun = 1e5))

for (file in sort(list.files(file.path(shared, "glmm"), pattern = "\\.json$", full.names = TRUE))) {
  ref <- fromJSON(file, simplifyVector = FALSE)
  .d <- read_case_data(ref)
  call <- call("glmer", formula = as.formula(ref$formula), data = quote(.d), family = as.name(ref$family),
               nAGQ = ref$nAGQ, control = tight)
  if (!is.null(ref$weights)) call$weights <- as.name(ref$weights)
  seconds <- system.time(m <- eval(call))[["elapsed"]]
  cf <- summary(m)$coefficients
  re <- as.data.frame(ranef(m, condVar = TRUE))
  saturated <- if (ref$nAGQ > 1) {
    y <- m@resp$y; n <- m@resp$weights
    -2 * sum(dbinom(round(y * n), round(n), y, log = TRUE))
  } else 0
  exact <- NULL
  if (ref$nAGQ == 1) {
    pars <- c(getME(m, "theta"), fixef(m))
    f <- exact_laplace(getME(m, "devfun"), getME(m, "Zt"))
    H <- central_hessian(f, pars, rep(1e-3, length(pars)))
    nth <- length(getME(m, "theta"))
    exact <- list(minus2logLik = f(pars),
                  fixef_se = as.list(setNames(sqrt(diag(2 * solve(H)))[-seq_len(nth)], names(fixef(m)))),
                  note = "the Laplace criterion with log|L|^2 at the mode's own weights, at lme4's optimum; SEs from its central-difference Hessian (step 1e-3)")
  }
  out <- list(
    id = ref$id, formula = ref$formula, family = ref$family, nAGQ = ref$nAGQ, weights = ref$weights,
    control = "glmerControl(optimizer = 'bobyqa', tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-10, maxfun = 1e5))",
    lme4_version = as.character(packageVersion("lme4")), seconds = seconds,
    minus2logLik = -2 * as.numeric(logLik(m)) + saturated, saturated_added = saturated,
    deviance = deviance(m), theta = unname(getME(m, "theta")),
    fixef = as.list(fixef(m)), fixef_se = as.list(setNames(cf[, "Std. Error"], rownames(cf))),
    vcov_beta = unname(as.matrix(vcov(m))), exact_laplace = exact,
    ranef = data.frame(grpvar = re$grpvar, term = re$term, grp = as.character(re$grp), condval = re$condval, condsd = re$condsd)
  )
  writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, null = "null"), file.path(out_dir, paste0(ref$id, ".json")))
  cat(sprintf("%-28s -2logLik %.8f (shared: %.8f)  %.1f s\n", ref$id, out$minus2logLik,
              ref$minus2logLik + (if (is.null(ref$agq_scale)) 0 else ref$agq_scale$saturated_minus2logLik), seconds))
}
