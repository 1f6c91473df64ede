# lme4 1.1-31 profile and Wald intervals of glmer fits, for tests/test_inference.py.
#   Rscript tools/glmm_confint_references.R tests/reference/extra
suppressMessages({library(lme4); library(jsonlite)})
out <- commandArgs(trailingOnly = TRUE)[1]
set2 <- "tests/reference/set2/data"
cbpp <- lme4::cbpp
grouse <- read.csv(file.path(set2, "grouseticks.csv"), colClasses = c(BROOD = "character", LOCATION = "character",
                                                                        YEAR = "character"))
tight <- glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-10))
models <- list(
  cbpp_binomial_laplace = list(formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)", data = cbpp,
                               family = binomial, csv = "builtin cbpp"),
  grouseticks_poisson_crossed = list(formula = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", data = grouse,
                                     family = poisson, csv = "set2 grouseticks.csv")
)
res <- lapply(models, function(m) {
  fit <- glmer(as.formula(m$formula), data = m$data, family = m$family, control = tight)
  prof <- confint(fit, method = "profile", oldNames = FALSE)
  wald <- confint(fit, method = "Wald", oldNames = FALSE)
  tab <- function(ci) data.frame(parm = rownames(ci), lower = ci[, 1], upper = ci[, 2], row.names = NULL)
  list(formula = m$formula, csv = m$csv, minus2logLik = -2 * as.numeric(logLik(fit)), profile = tab(prof),
       wald = tab(wald), note = "glmerControl(optimizer = 'bobyqa', tolPwrss = 1e-12, rhoend = 1e-10); confint(fit, method = 'profile', oldNames = FALSE)")
})
write_json(res, file.path(out, "glmm_confint.json"), digits = NA, auto_unbox = TRUE, pretty = TRUE)
