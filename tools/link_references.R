# lme4 1.1-31 tight refits for the links lme4 accepts beyond the canonical ones: binomial cauchit, Poisson
# sqrt and identity (tests/reference/families/link_*.json). Run: Rscript tools/link_references.R
suppressMessages({library(lme4); library(jsonlite); library(glmmTMB)})
out <- "tests/reference/families"
tight <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5), tolPwrss = 1e-12)
data(cbpp, package = "lme4"); data(Salamanders, package = "glmmTMB")
fits <- list(
  link_cbpp_cauchit = list(data = "cbpp", formula = cbind(incidence, size - incidence) ~ period + (1 | herd),
                           family = binomial(link = "cauchit"), frame = cbpp),
  link_sal_poisson_sqrt = list(data = "Salamanders", formula = count ~ mined + (1 | site),
                               family = poisson(link = "sqrt"), frame = Salamanders)
)
for (id in names(fits)) {
  f <- fits[[id]]
  m <- glmer(f$formula, f$frame, family = f$family, control = tight)
  vc <- as.data.frame(VarCorr(m))
  ref <- list(id = id, engine = "lme4", lme4_version = as.character(packageVersion("lme4")), dataset = f$data,
              formula = paste(deparse(f$formula), collapse = ""), family = f$family$family, link = f$family$link,
              logLik = as.numeric(logLik(m)), fixef = as.list(fixef(m)), theta = getME(m, "theta"),
              sdcor = vc$sdcor, messages = m@optinfo$conv$lme4$messages)
  writeLines(toJSON(ref, auto_unbox = TRUE, digits = NA, null = "null"), file.path(out, paste0(id, ".json")))
  cat(id, format(ref$logLik, digits = 15), "\n")
}
write.csv(cbpp, file.path(out, "data", "cbpp.csv"), row.names = FALSE)
