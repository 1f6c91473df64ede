# lme4's tight refit of nlme's Wafer model with a singular three-column term (the boundary optimum the Newton
# stage must hand over to L-BFGS-B on). Writes tests/reference/extra/Wafer_singular.json.
#
#   Rscript tools/wafer_reference.R        (from the repository root; reads tests/reference/extra/Wafer.csv)
suppressMessages({ library(lme4); library(jsonlite) })
d <- read.csv("tests/reference/extra/Wafer.csv", colClasses = c(Wafer = "character", Site = "character"))
d$Wafer <- factor(d$Wafer, levels = sort(unique(d$Wafer), method = "radix"))
d$Site <- factor(d$Site, levels = sort(unique(d$Site), method = "radix"))
formula <- current ~ voltage + I(voltage^2) + (1 + voltage + I(voltage^2) | Wafer) + (1 | Wafer:Site)
fits <- lapply(c("bobyqa", "Nelder_Mead"), function(optimizer)
  lmer(formula, d, control = lmerControl(optimizer = optimizer, optCtrl = if (optimizer == "bobyqa")
    list(rhoend = 1e-12, maxfun = 1e5) else list(FtolAbs = 1e-14, FtolRel = 1e-15, maxfun = 1e5))))
best <- fits[[which.min(sapply(fits, REMLcrit))]]
started <- proc.time()[["elapsed"]]; default <- lmer(formula, d); seconds <- proc.time()[["elapsed"]] - started
out <- list(formula = paste(deparse(formula), collapse = ""), csv = "Wafer.csv", factor_columns = c("Wafer", "Site"),
            REML = TRUE, deviance = REMLcrit(best), deviance_default = REMLcrit(default), theta = unname(getME(best, "theta")),
            fixef = as.list(fixef(best)), isSingular = isSingular(best), default_evaluations = default@optinfo$feval,
            default_seconds = seconds, lme4_version = as.character(packageVersion("lme4")))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA), "tests/reference/extra/Wafer_singular.json")
cat(format(out$deviance, digits = 15), format(out$deviance_default, digits = 15), out$default_evaluations, "\n")
