# lmerTest 3.1-3 / pbkrtest F tests of models with interactions, for tests/test_inference.py.
#   Rscript tools/ftest_references.R tests/reference/extra
# cake (lme4): recipe x temperature (as an unordered factor: treatment contrasts), and recipe x numeric temp.
suppressMessages({library(lmerTest); library(jsonlite)})
out <- commandArgs(trailingOnly = TRUE)[1]
data(cake, package = "lme4")
cake$temperature <- factor(as.character(cake$temperature))
cake$replicate <- as.character(cake$replicate)
write.csv(cake[, c("replicate", "recipe", "temperature", "angle", "temp")], file.path(out, "cake.csv"), row.names = FALSE)
tables <- function(m) {
  conv <- function(a) { a <- as.data.frame(a); a$term <- rownames(a); rownames(a) <- NULL; a }
  list(type3 = conv(anova(m, type = 3)), type1 = conv(anova(m, type = 1)),
       type3_KR = conv(anova(m, type = 3, ddf = "Kenward-Roger")),
       type1_KR = conv(anova(m, type = 1, ddf = "Kenward-Roger")),
       coef = {s <- as.data.frame(coef(summary(m))); s$term <- rownames(s); rownames(s) <- NULL; s},
       coef_KR = {s <- as.data.frame(coef(summary(m, ddf = "Kenward-Roger"))); s$term <- rownames(s); rownames(s) <- NULL; s},
       REMLcrit = REMLcrit(m))
}
models <- list(
  cake_factorial = "angle ~ recipe * temperature + (1 | recipe:replicate)",
  cake_numeric = "angle ~ recipe * temp + (1 | recipe:replicate)"
)
res <- lapply(models, function(f) c(list(formula = f, csv = "cake.csv"), tables(lmer(as.formula(f), cake))))
# unbalanced: type I and III differ and lmerTest's type III orthogonalisation matters
unbalanced <- cake[-c(1, 2, 3, 10, 50, 51, 100, 161, 200, 201, 202, 260), ]
write.csv(unbalanced[, c("replicate", "recipe", "temperature", "angle", "temp")], file.path(out, "cake_unbalanced.csv"),
          row.names = FALSE)
res <- c(res, setNames(lapply(models, function(f) c(list(formula = f, csv = "cake_unbalanced.csv"),
                                                      tables(lmer(as.formula(f), unbalanced)))),
                       paste0(names(models), "_unbalanced")))
write_json(res, file.path(out, "cake_ftests.json"), digits = NA, auto_unbox = TRUE, pretty = TRUE)
