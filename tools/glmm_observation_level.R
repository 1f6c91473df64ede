# lme4 fits of GLMMs with an observation-level random effect (one level per row), which a family without a
# dispersion parameter identifies: lme4's own examples of overdispersion (cbpp with (1 | obs)) and grouseticks
# with (1 | INDEX). Tight refits (bobyqa, tolPwrss = 1e-12), whose criterion is the exact Laplace value.
#
#   Rscript tools/glmm_observation_level.R        (from the repository root; writes tests/reference/glmm/)
#
# Needs lme4 and jsonlite (Debian: r-cran-lme4 r-cran-jsonlite).

suppressMessages({ library(lme4); library(jsonlite) })
out_dir <- "tests/reference/glmm"
control <- glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-10, maxfun = 1e5))

fit_case <- function(id, formula, data, csv, factor_columns) {
  started <- proc.time()[["elapsed"]]
  fit <- glmer(formula, data = data, family = if (any(grepl("TICKS", deparse(formula)))) poisson else binomial,
               control = control)
  seconds <- proc.time()[["elapsed"]] - started
  fixef_values <- fixef(fit)
  out <- list(
    id = id, formula = paste(deparse(formula), collapse = ""), family = family(fit)$family, csv = csv,
    factor_columns = factor_columns, lme4_version = as.character(packageVersion("lme4")), seconds = seconds,
    minus2logLik = -2 * as.numeric(logLik(fit)), theta = unname(getME(fit, "theta")),
    theta_names = names(getME(fit, "theta")),
    fixef = as.list(fixef_values), fixef_se = as.list(setNames(sqrt(diag(as.matrix(vcov(fit)))), names(fixef_values))),
    messages = fit@optinfo$conv$lme4$messages
  )
  writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, null = "null"), file.path(out_dir, paste0(id, ".json")))
  cat(id, format(out$minus2logLik, digits = 15), "\n")
}

cbpp <- read.csv("src/tfmixed/datasets/data/cbpp.csv", colClasses = c(herd = "character", period = "character"))
cbpp$herd <- factor(cbpp$herd, levels = sort(unique(cbpp$herd), method = "radix"))
cbpp$period <- factor(cbpp$period, levels = sort(unique(cbpp$period), method = "radix"))
cbpp$obs <- factor(sprintf("%02d", seq_len(nrow(cbpp))))
write.csv(cbpp, file.path(out_dir, "cbpp_obs.csv"), row.names = FALSE)
fit_case("cbpp_observation_level", cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs), cbpp,
         "cbpp_obs.csv", c("herd", "period", "obs"))

grouse <- read.csv("tests/reference/set2/data/grouseticks.csv",
                   colClasses = c(INDEX = "character", BROOD = "character", YEAR = "character", LOCATION = "character"))
for (column in c("INDEX", "BROOD", "YEAR", "LOCATION")) grouse[[column]] <- factor(grouse[[column]], levels = sort(unique(grouse[[column]]), method = "radix"))
fit_case("grouseticks_observation_level", TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION), grouse,
         "../set2/data/grouseticks.csv", c("INDEX", "BROOD", "YEAR", "LOCATION"))
