# Reference fits for GLMM families with dispersion parameters (negative binomial, Gamma, non-identity Gaussian,
# beta, Tweedie, generalized Poisson, zero inflation, dispersion sub-models, inverse Gaussian), from glmmTMB and
# lme4, on real data sets shipped with R packages.
#
#   Rscript tools/family_references.R [output dir]      (default tests/reference/families; ~1 minute)
#
# Needs glmmTMB (>= 1.1.5), TMB, lme4, MASS, nlme, pscl (for UKHouseOfCommons), statmod and jsonlite
# (Debian: r-cran-glmmtmb r-cran-lme4 r-cran-pscl r-cran-statmod r-cran-jsonlite).
# Writes <out>/<id>.json for each model and <out>/data/<dataset>.csv for each data set. The JSON layout and the
# caveats are in <out>/README.md.
#
# glmmTMB fits: nlminb with glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-14)),
# then up to three Newton "polish" rounds: one Newton step on the TMB objective (AD gradient, Hessian by central
# differences of that gradient with relative steps) and a refit started there with the same control. nlminb
# stops at max|grad| ~ 1e-4..1e-3 whatever rel.tol is; the polish takes that to ~1e-8 or below and the
# objective down by ~1e-9. What the unpolished fit gave is kept under "initial_fit".
#
# lme4 fits: glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12, optCtrl = list(rhobeg = 0.2, rhoend = 1e-10,
# maxfun = 1e5)) (tolPwrss as in tools/glmm_tight_references.R); glmer.nb's theta search is redone with
# lme4:::optTheta(tol = 1e-10) (glmer.nb(tol = ) cannot be used: lme4 1.1-31 passes it on to glmer, which
# rejects it). "default_logLik" is the same model with lme4's default control.

suppressMessages({
  library(glmmTMB); library(lme4); library(jsonlite); library(MASS)
})
args <- commandArgs(trailingOnly = TRUE)
out_dir <- if (length(args) >= 1) args[1] else "tests/reference/families"
dir.create(file.path(out_dir, "data"), showWarnings = FALSE, recursive = TRUE)
t_start <- Sys.time()

versions <- list(
  R = R.version.string,
  glmmTMB = as.character(packageVersion("glmmTMB")), TMB = as.character(packageVersion("TMB")),
  lme4 = as.character(packageVersion("lme4")), Matrix = as.character(packageVersion("Matrix")),
  MASS = as.character(packageVersion("MASS")), jsonlite = as.character(packageVersion("jsonlite"))
)

# ---------------------------------------------------------------------------------------------------------------
# JSON writer with full double precision (jsonlite writes at most 15 significant digits, which does not
# round-trip). Conventions: NULL -> null; data.frame -> array of row objects; named list / named atomic vector ->
# object; unnamed list -> array; unnamed atomic of length 1 -> scalar unless wrapped in I(); NA/NaN -> null.
# Numbers use the shortest of 15/16/17 significant digits that reads back as the same double.
fmt_num <- function(v) vapply(v, function(x) {
  if (!is.finite(x)) return("null")
  for (d in 15:17) { s <- trimws(formatC(x, digits = d, format = "g")); if (as.numeric(s) == x) return(s) }
  trimws(formatC(x, digits = 17, format = "g"))
}, "")
json_str <- function(s) vapply(s, function(z) if (is.na(z)) "null" else as.character(toJSON(z, auto_unbox = TRUE)), "")
json_atoms <- function(x) {
  if (is.factor(x)) x <- as.character(x)
  if (is.logical(x)) return(ifelse(is.na(x), "null", ifelse(x, "true", "false")))
  if (is.integer(x)) return(ifelse(is.na(x), "null", as.character(x)))
  if (is.numeric(x)) return(fmt_num(as.numeric(x)))
  json_str(as.character(x))
}
to_json <- function(x, ind = "") {
  ind2 <- paste0(ind, "  ")
  obj <- function(keys, vals) {
    if (!length(vals)) return("{}")
    paste0("{\n", paste0(ind2, json_str(keys), ": ", vals, collapse = ",\n"), "\n", ind, "}")
  }
  arr <- function(vals, inline = FALSE) {
    if (!length(vals)) return("[]")
    if (inline) return(paste0("[", paste(vals, collapse = ", "), "]"))
    paste0("[\n", paste0(ind2, vals, collapse = ",\n"), "\n", ind, "]")
  }
  if (is.null(x)) return("null")
  if (is.data.frame(x)) {
    rows <- lapply(seq_len(nrow(x)), function(i) {
      vals <- vapply(names(x), function(n) json_atoms(x[[n]][i]), "")
      paste0("{", paste0(json_str(names(x)), ": ", vals, collapse = ", "), "}")
    })
    return(arr(unlist(rows)))
  }
  if (is.matrix(x)) return(to_json(lapply(seq_len(nrow(x)), function(i) I(unname(x[i, ]))), ind))
  if (is.list(x)) {
    vals <- vapply(x, function(e) to_json(e, ind2), "")
    if (!is.null(names(x))) return(obj(names(x), vals))
    return(arr(vals))
  }
  vals <- json_atoms(x)
  if (!is.null(names(x))) return(obj(names(x), vals))
  if (inherits(x, "AsIs") || length(x) != 1) return(arr(vals, inline = TRUE))
  vals
}
write_json_file <- function(x, path) writeLines(to_json(x), path)

# ---------------------------------------------------------------------------------------------------------------
# Data: only the columns the models use, in the package's row order.
data("Salamanders", package = "glmmTMB", envir = environment())
data("Owls", package = "glmmTMB", envir = environment())
data("grouseticks", package = "lme4", envir = environment())
data("sleepstudy", package = "lme4", envir = environment())
data("UKHouseOfCommons", package = "pscl", envir = environment())
plain <- function(d) { d <- as.data.frame(d); class(d) <- "data.frame"; rownames(d) <- NULL; d }
ortho <- plain(nlme::Orthodont)
# two constituencies have county "" (labels not recovered, see ?pscl::UKHouseOfCommons): dropped, since ""
# is no county (and pandas would read it as missing)
ukhc <- plain(UKHouseOfCommons[UKHouseOfCommons$county != "", c("v3", "libinc", "county")])
ukhc$county <- factor(ukhc$county, levels = sort(unique(ukhc$county), method = "radix"))
datasets <- list(
  Salamanders = plain(Salamanders[c("site", "mined", "spp", "count")]),
  Owls = plain(Owls[c("Nest", "FoodTreatment", "SexParent", "SiblingNegotiation", "BroodSize", "NegPerChick")]),
  grouseticks = plain(grouseticks[c("TICKS", "YEAR", "LOCATION")]),
  sleepstudy = plain(sleepstudy[c("Reaction", "Days", "Subject")]),
  Orthodont = data.frame(distance = ortho$distance, age = ortho$age, Sex = ortho$Sex, Subject = ortho$Subject),
  UKHouseOfCommons = ukhc
)
dataset_source <- list(Salamanders = "glmmTMB::Salamanders", Owls = "glmmTMB::Owls", grouseticks = "lme4::grouseticks",
                       sleepstudy = "lme4::sleepstudy", Orthodont = "nlme::Orthodont",
                       UKHouseOfCommons = "pscl::UKHouseOfCommons (the 2 rows with county \"\" dropped; county made a factor, levels in C-locale order)")

dataset_info <- list()
for (name in names(datasets)) {
  d <- datasets[[name]]
  path <- file.path(out_dir, "data", paste0(name, ".csv"))
  write.csv(d, path, row.names = FALSE)
  back <- read.csv(path, stringsAsFactors = FALSE)
  exact <- all(vapply(names(d), function(n) {
    if (is.factor(d[[n]])) identical(as.character(back[[n]]), as.character(d[[n]])) else identical(as.numeric(back[[n]]), as.numeric(d[[n]]))
  }, TRUE))
  if (!exact) stop("CSV of ", name, " does not round-trip")
  facs <- names(d)[vapply(d, is.factor, TRUE)]
  for (n in facs) if (any(levels(d[[n]]) %in% c("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "n/a", "<NA>")))
    stop(name, "$", n, " has a level pandas would read as missing")
  dataset_info[[name]] <- list(
    dataset = name, source = dataset_source[[name]], csv = paste0("data/", name, ".csv"), nrow = nrow(d),
    columns = I(names(d)),
    column_types = vapply(d, function(x) if (is.factor(x)) "factor" else if (is.integer(x)) "integer" else "numeric", ""),
    factor_columns = I(facs),
    numeric_looking_factor_columns = I(facs[vapply(facs, function(n) !anyNA(suppressWarnings(as.numeric(levels(d[[n]])))), TRUE)]),
    ordered_factor_columns = I(facs[vapply(facs, function(n) is.ordered(d[[n]]), TRUE)]),
    factor_levels = setNames(lapply(facs, function(n) I(levels(d[[n]]))), facs),
    csv_roundtrip_exact = exact
  )
}

# ---------------------------------------------------------------------------------------------------------------
# Model list. start: a function of the data giving glmmTMB start values (inverse / identity links, where the
# default start beta = 0 puts the mean at infinity or zero).
glm_start <- function(formula_fixed, fam, y, g, betad_fun) function(d) {
  gl <- glm(formula_fixed, data = d, family = fam)
  list(beta = unname(coef(gl)), betad = betad_fun(gl),
       theta = log(sd(fam$linkfun(tapply(d[[y]], d[[g]], mean)))))
}
gamma_betad <- function(gl) log(1 / summary(gl)$dispersion)    # glmmTMB Gamma: betad = log(shape)
gauss_betad <- function(gl) log(mean(residuals(gl, "response")^2))  # glmmTMB gaussian: betad = log(sigma^2)

tmb_models <- list(
  list(id = "sal_nb2", data = "Salamanders", formula = "count ~ mined + (1|site)", family = "nbinom2()"),
  list(id = "sal_nb2_spp", data = "Salamanders", formula = "count ~ spp + mined + (1|site)", family = "nbinom2()"),
  list(id = "sal_nb1", data = "Salamanders", formula = "count ~ mined + (1|site)", family = "nbinom1()"),
  list(id = "owls_nb2", data = "Owls", formula = "SiblingNegotiation ~ FoodTreatment*SexParent + offset(log(BroodSize)) + (1|Nest)", family = "nbinom2()"),
  list(id = "owls_nb1", data = "Owls", formula = "SiblingNegotiation ~ FoodTreatment*SexParent + offset(log(BroodSize)) + (1|Nest)", family = "nbinom1()"),
  list(id = "grouse_nb2", data = "grouseticks", formula = "TICKS ~ YEAR + (1|LOCATION)", family = "nbinom2()"),
  list(id = "sleep_gamma_log", data = "sleepstudy", formula = "Reaction ~ Days + (Days|Subject)", family = "Gamma(link = \"log\")"),
  list(id = "sleep_gamma_inverse", data = "sleepstudy", formula = "Reaction ~ Days + (1|Subject)", family = "Gamma(link = \"inverse\")",
       start = glm_start(Reaction ~ Days, Gamma("inverse"), "Reaction", "Subject", gamma_betad)),
  list(id = "ortho_gamma_identity", data = "Orthodont", formula = "distance ~ age + Sex + (1|Subject)", family = "Gamma(link = \"identity\")",
       start = glm_start(distance ~ age + Sex, Gamma("identity"), "distance", "Subject", gamma_betad)),
  list(id = "sleep_gaussian_log", data = "sleepstudy", formula = "Reaction ~ Days + (1|Subject)", family = "gaussian(link = \"log\")"),
  list(id = "sleep_gaussian_inverse", data = "sleepstudy", formula = "Reaction ~ Days + (1|Subject)", family = "gaussian(link = \"inverse\")",
       start = glm_start(Reaction ~ Days, gaussian("inverse"), "Reaction", "Subject", gauss_betad)),
  list(id = "beta_logit", data = "UKHouseOfCommons", formula = "v3 ~ libinc + (1|county)", family = "beta_family(link = \"logit\")"),
  list(id = "owls_tweedie", data = "Owls", formula = "NegPerChick ~ FoodTreatment + (1|Nest)", family = "tweedie(link = \"log\")"),
  list(id = "sal_zip", data = "Salamanders", formula = "count ~ mined + (1|site)", family = "poisson()", ziformula = "~mined"),
  list(id = "sal_zinb2", data = "Salamanders", formula = "count ~ spp + mined + (1|site)", family = "nbinom2()", ziformula = "~mined"),
  list(id = "sal_nb2_disp", data = "Salamanders", formula = "count ~ mined + (1|site)", family = "nbinom2()", dispformula = "~mined"),
  list(id = "sal_genpois", data = "Salamanders", formula = "count ~ mined + (1|site)", family = "genpois()"),
  list(id = "sal_poisson_glmmTMB", data = "Salamanders", formula = "count ~ mined + (1|site)", family = "poisson()"),
  list(id = "sleep_gamma_log_int", data = "sleepstudy", formula = "Reaction ~ Days + (1|Subject)", family = "Gamma(link = \"log\")")
)

# bobyqa on a rescaled parameter vector, a failed PIRLS (NaN) counting as a huge deviance: the only way found
# to fit the canonical 1/mu^2 inverse-Gaussian GLMM in lme4 1.1-31 (its own optimisers stop with "PIRLS loop
# resulted in NaN value" from any start, because trial steps make eta negative).
scaled_bobyqa <- function(par, fn, lower, upper, control = list(), ...) {
  sc <- pmax(abs(par), 1e-8)
  g <- function(z) { v <- tryCatch(fn(z * sc), error = function(e) NA_real_); if (is.finite(v)) v else 1e10 }
  o <- minqa::bobyqa(par / sc, g, lower = lower / sc, upper = upper / sc, control = control)
  list(par = o$par * sc, fval = o$fval, feval = o$feval, conv = o$ierr, message = o$msg)
}

lme4_models <- list(
  list(id = "sal_glmer_nb", data = "Salamanders", formula = "count ~ mined + (1|site)", fun = "glmer.nb", compare = "sal_nb2"),
  list(id = "owls_glmer_nb", data = "Owls", formula = "SiblingNegotiation ~ FoodTreatment*SexParent + offset(log(BroodSize)) + (1|Nest)", fun = "glmer.nb", compare = "owls_nb2"),
  list(id = "sleep_glmer_gamma_log", data = "sleepstudy", formula = "Reaction ~ Days + (1|Subject)", fun = "glmer", family = "Gamma(link = \"log\")", compare = "sleep_gamma_log_int"),
  list(id = "sleep_glmer_invgauss", data = "sleepstudy", formula = "Reaction ~ Days + (1|Subject)", fun = "glmer", family = "inverse.gaussian(link = \"1/mu^2\")", scaled = TRUE),
  list(id = "sleep_glmer_invgauss_log", data = "sleepstudy", formula = "Reaction ~ Days + (1|Subject)", fun = "glmer", family = "inverse.gaussian(link = \"log\")"),
  list(id = "sal_glmer_poisson", data = "Salamanders", formula = "count ~ mined + (1|site)", fun = "glmer", family = "poisson()", compare = "sal_poisson_glmmTMB")
)

tmb_ctrl_call <- "glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-14))"
tmb_ctrl <- eval(parse(text = tmb_ctrl_call))
tight_call <- "glmerControl(optimizer = \"bobyqa\", tolPwrss = 1e-12, optCtrl = list(rhobeg = 0.2, rhoend = 1e-10, maxfun = 1e5))"
tight <- eval(parse(text = tight_call))
scaled_call <- "glmerControl(optimizer = scaled_bobyqa, tolPwrss = 1e-12, calc.derivs = FALSE, optCtrl = list(rhobeg = 0.05, rhoend = 1e-12, maxfun = 1e5))"
scaled_ctrl <- eval(parse(text = scaled_call))

# Evaluate an expression, collecting warnings and messages.
capture <- function(expr) {
  warns <- character(0)
  value <- withCallingHandlers(tryCatch(expr, error = function(e) e),
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { warns <<- c(warns, paste("message:", trimws(conditionMessage(m)))); invokeRestart("muffleMessage") })
  list(value = value, warnings = unique(warns))
}

# ---------------------------------------------------------------------------------------------------------------
# glmmTMB helpers
tmb_call <- function(spec, control, start = NULL) {
  cl <- call("glmmTMB", formula = as.formula(spec$formula), data = quote(.d), family = parse(text = spec$family)[[1]],
             REML = FALSE, control = control)
  if (!is.null(spec$ziformula)) cl$ziformula <- as.formula(spec$ziformula)
  if (!is.null(spec$dispformula)) cl$dispformula <- as.formula(spec$dispformula)
  if (!is.null(start)) cl$start <- start
  cl
}
fit_tmb <- function(spec, d, control, start = NULL) {
  env <- new.env(); env$.d <- d
  capture(eval(tmb_call(spec, control, start), env))
}
# Central differences of the AD gradient, relative steps.
num_hessian <- function(fit, p) {
  n <- length(p); H <- matrix(NA_real_, n, n)
  for (i in 1:n) {
    h <- 1e-5 * max(abs(p[i]), 1e-3); e <- replace(numeric(n), i, h)
    H[, i] <- (fit$obj$gr(p + e) - fit$obj$gr(p - e)) / (2 * h)
  }
  fit$obj$fn(p)  # leave the TMB object's state at p
  (H + t(H)) / 2
}
newton_info <- function(fit) {
  p <- fit$fit$par; g <- as.numeric(fit$obj$gr(p)); H <- num_hessian(fit, p)
  step <- tryCatch(solve(H, g), error = function(e) rep(NA_real_, length(p)))
  list(g = g, step = step, decrement = 0.5 * sum(g * step), max_step = max(abs(step)))
}

varcorr_df <- function(vc) {
  rows <- list()
  for (grp in names(vc)) {
    m <- vc[[grp]]; sds <- attr(m, "stddev"); cors <- attr(m, "correlation"); nm <- colnames(m)
    for (i in seq_along(nm)) rows[[length(rows) + 1]] <- data.frame(grp = grp, var1 = nm[i], var2 = NA_character_, vcov = m[i, i], sdcor = unname(sds[i]))
    if (length(nm) > 1) for (j in 1:(length(nm) - 1)) for (i in (j + 1):length(nm))
      rows[[length(rows) + 1]] <- data.frame(grp = grp, var1 = nm[j], var2 = nm[i], vcov = m[i, j], sdcor = cors[i, j])
  }
  do.call(rbind, rows)
}
named <- function(v) as.list(setNames(as.numeric(v), names(v)))
se_of <- function(V) if (is.null(V)) NULL else named(setNames(sqrt(diag(as.matrix(V))), colnames(V)))
first_ranef <- function(re_df, engine) {
  g1 <- as.character(re_df$grpvar[1])
  r <- re_df[re_df$grpvar == g1, ]
  data.frame(grp = as.character(r$grpvar), term = as.character(r$term), level = as.character(r$grp),
             condval = r$condval, condsd = r$condsd)
}

family_note <- list(
  nbinom2 = "sigma = theta (NB2 size): Var = mu + mu^2/theta; internal betad = log(theta)",
  nbinom1 = "sigma = alpha: Var = mu*(1 + alpha); internal betad = log(alpha)",
  Gamma = "sigma = 1/sqrt(shape) (coefficient of variation): shape = exp(betad), scale = mu/shape, Var = mu^2/shape",
  gaussian = "sigma = residual SD (ML); internal betad = log(sigma^2)",
  beta = "sigma = phi (precision): Var = mu*(1-mu)/(1+phi); internal betad = log(phi)",
  tweedie = "sigma = phi: Var = phi*mu^p; internal betad = log(phi); power p = 1 + plogis(psi)",
  genpois = "sigma = phi = Var/mu (glmmTMB's help calls this phi^2): internal betad = log(Var/mu); dgenpois(theta = mu/sqrt(phi), lambda = 1 - 1/sqrt(phi))",
  poisson = "no dispersion parameter; sigma(fit) returns 1"
)

tmb_fits <- list()
summary_rows <- list()

for (spec in tmb_models) {
  cat("glmmTMB:", spec$id, "\n")
  d <- datasets[[spec$data]]; info <- dataset_info[[spec$data]]
  start <- if (!is.null(spec$start)) spec$start(d) else NULL
  t0 <- Sys.time()
  res <- fit_tmb(spec, d, tmb_ctrl, start)
  control_used <- tmb_ctrl_call
  if (inherits(res$value, "error")) {
    for (rt in c(1e-12, 1e-10)) {
      control_used <- sprintf("glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = %g))", rt)
      res <- fit_tmb(spec, d, eval(parse(text = control_used)), start)
      if (!inherits(res$value, "error")) break
    }
  }
  if (inherits(res$value, "error")) stop(spec$id, ": ", conditionMessage(res$value))
  fit <- res$value; warns <- res$warnings
  ni <- newton_info(fit)
  initial <- list(logLik = as.numeric(logLik(fit)), objective = fit$fit$objective,
                  max_abs_gradient = max(abs(ni$g)), newton_decrement = ni$decrement,
                  convergence = fit$fit$convergence, message = fit$fit$message, warnings = I(warns))
  # Newton polish
  rounds <- 0
  while (rounds < 3 && is.finite(ni$decrement) && ni$decrement > 0 && (max(abs(ni$g)) > 1e-9 && ni$decrement > 1e-16)) {
    p1 <- fit$fit$par - ni$step
    r2 <- fit_tmb(spec, d, eval(parse(text = control_used)), split(unname(p1), factor(names(p1), levels = unique(names(p1)))))
    if (inherits(r2$value, "error") || !is.finite(r2$value$fit$objective) || r2$value$fit$objective > fit$fit$objective + 1e-10) {
      fit$obj$fn(fit$fit$par); break
    }
    fit <- r2$value; warns <- r2$warnings; rounds <- rounds + 1
    ni <- newton_info(fit)
  }
  seconds <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
  # default control for comparison (same start)
  dres <- fit_tmb(spec, d, glmmTMBControl(), start)
  default_ll <- if (inherits(dres$value, "error")) NULL else as.numeric(logLik(dres$value))
  fit$obj$fn(fit$fit$par)

  ff <- family(fit)
  ll <- logLik(fit)
  fe <- fixef(fit)
  V <- vcov(fit)
  Vfull <- vcov(fit, full = TRUE)
  has_disp <- !(ff$family %in% c("poisson", "binomial"))
  disp_idx <- grep("^d~", colnames(Vfull))
  re <- first_ranef(as.data.frame(ranef(fit, condVar = TRUE)), "glmmTMB")
  fp <- family_params(fit)
  par <- fit$fit$par
  out <- list(
    id = spec$id, engine = "glmmTMB", versions = versions,
    dataset = spec$data, dataset_source = info$source, csv = info$csv, nobs = nobs(fit),
    columns = info$columns, factor_columns = info$factor_columns,
    numeric_looking_factor_columns = info$numeric_looking_factor_columns,
    ordered_factor_columns = info$ordered_factor_columns, factor_levels = info$factor_levels,
    formula = spec$formula, family = ff$family, link = ff$link, family_call = spec$family,
    ziformula = spec$ziformula, dispformula = spec$dispformula, REML = FALSE,
    control = control_used, start = start, polish_rounds = rounds, seconds = seconds,
    logLik = as.numeric(ll), df = attr(ll, "df"), AIC = AIC(fit), default_logLik = default_ll,
    objective = fit$fit$objective,
    convergence = fit$fit$convergence, optimizer_message = fit$fit$message,
    pdHess = fit$sdr$pdHess,
    max_abs_gradient = max(abs(fit$sdr$gradient.fixed)), gradient = I(as.numeric(fit$sdr$gradient.fixed)),
    newton_decrement = ni$decrement, newton_step_max_abs = ni$max_step,
    warnings = I(warns), initial_fit = initial,
    fixef = named(fe$cond), fixef_se = se_of(V$cond),
    fixef_zi = if (!is.null(spec$ziformula)) named(fe$zi) else NULL,
    fixef_zi_se = if (!is.null(spec$ziformula)) { z <- se_of(V$zi); names(z) <- sub("^zi~", "", names(z)); z } else NULL,
    fixef_disp = if (has_disp) named(fe$disp) else NULL,
    fixef_disp_se = if (has_disp) named(setNames(sqrt(diag(Vfull))[disp_idx], sub("^d~", "", colnames(Vfull)[disp_idx]))) else NULL,
    varcorr = varcorr_df(VarCorr(fit)$cond),
    sigma = if (has_disp) { s <- sigma(fit); if (is.na(s)) NULL else s } else NULL,
    sigma_meaning = family_note[[ff$family]],
    family_params = if (length(fp)) named(fp) else NULL,
    par = list(names = I(names(par)), values = I(unname(par))),
    vcov_full = list(names = I(unname(colnames(Vfull))), matrix = unname(as.matrix(Vfull))),
    ranef = re,
    fitted_head = I(unname(fitted(fit)[1:10])),
    linpred_head = I(unname(predict(fit, type = "link")[1:10]))
  )
  if (!is.null(spec$ziformula)) {
    out$conditional_mean_head <- I(unname(predict(fit, type = "conditional")[1:10]))
    out$zprob_head <- I(unname(predict(fit, type = "zprob")[1:10]))
  }
  if (!is.null(spec$dispformula)) {
    out$dispersion_head <- I(unname(exp(predict(fit, type = "disp")[1:10])))
    out$dispersion_head_note <- "exp of predict(type = 'disp'): the per-row NB2 theta"
  }
  write_json_file(out, file.path(out_dir, paste0(spec$id, ".json")))
  tmb_fits[[spec$id]] <- list(fit = fit, out = out)
  summary_rows[[spec$id]] <- data.frame(id = spec$id, engine = "glmmTMB", logLik = out$logLik, maxgrad = out$max_abs_gradient,
                                        pdHess = out$pdHess, conv = fit$fit$message, polish = rounds)
}

# ---------------------------------------------------------------------------------------------------------------
# lme4 helpers
lme4_fit <- function(spec, d, control) {
  env <- new.env(); env$.d <- d
  if (spec$fun == "glmer.nb") {
    cl <- call("glmer.nb", formula = as.formula(spec$formula), data = quote(.d))
    if (!is.null(control)) cl$control <- control
    capture({
      m <- eval(cl, env)
      if (!is.null(control)) {
        th <- getME(m, "glmer.nb.theta")
        m <- lme4:::optTheta(m, interval = log(th) + c(-0.5, 0.5), tol = 1e-10, control = control)
      }
      m
    })
  } else {
    cl <- call("glmer", formula = as.formula(spec$formula), data = quote(.d), family = parse(text = spec$family)[[1]])
    if (!is.null(control)) cl$control <- control
    capture(eval(cl, env))
  }
}
script_dir <- dirname(normalizePath(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])))
source(file.path(script_dir, "laplace_helpers.R"))
mode_weight_criterion <- laplace_at_mode_weights

# Adaptive Gauss-Hermite marginal log-likelihood for a model with one scalar random intercept:
# sum_g log int prod_i f(y_i | eta_i + b) N(b; 0, sd^2) db. ldens(y, eta) is the conditional log density.
agq_loglik <- function(y, eta0, grp, sd, ldens, nodes = 40) {
  gq <- statmod::gauss.quad(nodes, "hermite")
  total <- 0
  for (g in split(seq_along(y), grp)) {
    h <- function(b) sum(ldens(y[g], eta0[g] + b)) + dnorm(b, 0, sd, log = TRUE)
    bh <- optimize(function(b) -h(b), c(-12 * sd, 12 * sd), tol = 1e-12)$minimum
    e <- 1e-4 * max(sd, 1e-3)
    curv <- -(h(bh + e) - 2 * h(bh) + h(bh - e)) / e^2
    s <- 1 / sqrt(curv)
    if (nodes == 1) { total <- total + h(bh) + log(sqrt(2 * pi) * s); next }
    lv <- vapply(gq$nodes, function(x) h(bh + sqrt(2) * s * x), 0) + gq$nodes^2 + log(gq$weights)
    total <- total + log(sqrt(2) * s) + max(lv) + log(sum(exp(lv - max(lv))))
  }
  total
}

for (spec in lme4_models) {
  cat("lme4:", spec$id, "\n")
  d <- datasets[[spec$data]]; info <- dataset_info[[spec$data]]
  t0 <- Sys.time()
  ctrl <- if (isTRUE(spec$scaled)) scaled_ctrl else tight
  res <- lme4_fit(spec, d, ctrl)
  if (inherits(res$value, "error")) stop(spec$id, ": ", conditionMessage(res$value))
  m <- res$value; warns <- res$warnings
  seconds <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
  dres <- lme4_fit(spec, d, NULL)
  default_ll <- if (inherits(dres$value, "error")) NULL else as.numeric(logLik(dres$value))
  default_note <- if (inherits(dres$value, "error")) paste("default fit failed:", conditionMessage(dres$value)) else NULL
  # a check refit of the scaled-bobyqa fit from its own optimum
  if (isTRUE(spec$scaled)) {
    env <- new.env(); env$.d <- d
    cl <- call("glmer", formula = as.formula(spec$formula), data = quote(.d), family = parse(text = spec$family)[[1]],
               control = scaled_ctrl, start = list(theta = getME(m, "theta"), fixef = fixef(m)))
    r2 <- capture(eval(cl, env))
    if (!inherits(r2$value, "error") && -2 * logLik(r2$value) < -2 * logLik(m)) { m <- r2$value; warns <- r2$warnings }
  }

  is_nb <- spec$fun == "glmer.nb"
  use_sc <- as.logical(m@devcomp$dims[["useSc"]])
  ll <- logLik(m)
  fam <- family(m)
  fe <- fixef(m)
  V <- as.matrix(vcov(m))
  vc <- as.data.frame(VarCorr(m))
  resid_row <- vc[vc$grp == "Residual", ]
  vc <- vc[vc$grp != "Residual", ]
  vc$var1[is.na(vc$var1)] <- NA_character_
  theta <- getME(m, "theta")
  pars <- c(theta, fe)
  # The deviance function rebuilt with the tight tolPwrss: getME(m, "devfun") of lme4 1.1-31 comes back with
  # tolPwrss = 1e-7 whatever control the fit used, which makes finite-difference Hessians noisy.
  env <- new.env(); env$.d <- d
  dcl <- call("glmer", formula = as.formula(spec$formula), data = quote(.d),
              family = if (is_nb) call("negative.binomial", theta = getME(m, "glmer.nb.theta")) else parse(text = spec$family)[[1]],
              control = ctrl, devFunOnly = TRUE)
  devfun <- eval(dcl, env)
  stopifnot(environment(devfun)$tolPwrss == 1e-12)
  f <- mode_weight_criterion(devfun, getME(m, "Zt"))
  f0 <- f(pars)
  nth <- length(theta)
  # steps: 1e-3 relative for theta, 1% of lme4's standard error for beta
  H <- central_hessian(f, pars, c(1e-3 * pmax(abs(theta), 1e-6), 0.01 * sqrt(diag(V))))
  H_pd <- all(eigen(H, symmetric = TRUE, only.values = TRUE)$values > 0)
  mwc_se <- tryCatch(sqrt(diag(2 * solve(H)))[-seq_len(nth)], error = function(e) rep(NA_real_, length(fe)))
  steps <- c(1e-3 * pmax(abs(theta), 1e-6), 0.01 * sqrt(diag(V)))
  mwc_grad <- vapply(seq_along(pars), function(i) {
    e <- replace(numeric(length(pars)), i, steps[i]); (f(pars + e) - f(pars - e)) / (2 * steps[i])
  }, 0)
  devfun(pars)
  derivs <- m@optinfo$derivs
  re <- first_ranef(as.data.frame(ranef(m, condVar = TRUE)), "lme4")
  out <- list(
    id = spec$id, engine = "lme4", fitting_function = spec$fun, versions = versions,
    dataset = spec$data, dataset_source = info$source, csv = info$csv, nobs = nobs(m),
    columns = info$columns, factor_columns = info$factor_columns,
    numeric_looking_factor_columns = info$numeric_looking_factor_columns,
    ordered_factor_columns = info$ordered_factor_columns, factor_levels = info$factor_levels,
    formula = spec$formula,
    family = if (is_nb) "negative.binomial" else fam$family, link = fam$link,
    family_call = if (is_nb) "glmer.nb" else spec$family,
    ziformula = NULL, dispformula = NULL, REML = FALSE, nAGQ = 1,
    control = if (isTRUE(spec$scaled)) scaled_call else tight_call,
    theta_search = if (is_nb) "lme4:::optTheta(fit, interval = log(theta) + c(-0.5, 0.5), tol = 1e-10, control = <control>)" else NULL,
    seconds = seconds,
    logLik = as.numeric(ll), df = attr(ll, "df"), AIC = AIC(m),
    default_logLik = default_ll, default_note = default_note,
    objective = -2 * as.numeric(ll), objective_note = "lme4's Laplace deviance -2*logLik",
    optimizer_message = m@optinfo$message, lme4_messages = I(as.character(unlist(m@optinfo$conv$lme4$messages))),
    max_abs_gradient = if (!is.null(derivs)) max(abs(derivs$gradient)) else NULL,
    hessian_pd = if (!is.null(derivs)) all(eigen(derivs$Hessian, only.values = TRUE)$values > 0) else NULL,
    vcov_method = if (!is.null(derivs)) "vcov(fit): lme4's finite-difference Hessian of the deviance in (theta, beta)" else "vcov(fit) without derivatives (calc.derivs = FALSE): RX-based, conditional on theta; see mode_weight_criterion$fixef_se",
    warnings = I(warns),
    fixef = named(fe), fixef_se = named(setNames(sqrt(diag(V)), names(fe))),
    fixef_zi = NULL, fixef_zi_se = NULL, fixef_disp = NULL, fixef_disp_se = NULL,
    varcorr = vc,
    sigma = if (use_sc) sigma(m) else NULL,
    sigma_meaning = if (is_nb) "null: sigma(fit) is 1 for glmer.nb; the NB2 size is nb_theta" else if (!use_sc) "null: no scale parameter (sigma(fit) = 1)" else
      "sigma(fit) = sqrt(pwrss/n) (lme4's devcomp sigmaML), the Pearson-type scale estimate; NOT an ML dispersion parameter. varcorr sdcor = theta*sigma",
    residual_varcorr = if (nrow(resid_row)) list(vcov = resid_row$vcov, sdcor = resid_row$sdcor) else NULL,
    nb_theta = if (is_nb) getME(m, "glmer.nb.theta") else NULL,
    theta = named(theta),
    par = list(names = I(c(names(theta), names(fe))), values = I(unname(pars))),
    mode_weight_criterion = list(
      minus2logLik = f0, fixef_se = named(setNames(mwc_se, names(fe))),
      gradient = I(mwc_grad), max_abs_gradient = max(abs(mwc_grad)), hessian_pd = H_pd,
      newton_decrement = tryCatch(0.5 * sum(mwc_grad * solve(H, mwc_grad)), error = function(e) NA_real_),
      note = "lme4's Laplace criterion with log|L|^2 at the mode's own IRLS weights (as tools/glmm_tight_references.R), at the optimum, with tolPwrss = 1e-12; SEs from its central-difference Hessian in (theta, beta) (steps 1e-3*|theta|, 0.01*SE(beta)); conditional on the NB theta for glmer.nb; gradient (aligned with par$names) by central differences with the same steps; newton_decrement = g'H^-1 g/2 on this -2*logLik scale"
    ),
    ranef = re,
    fitted_head = I(unname(fitted(m)[1:10])),
    linpred_head = I(unname(predict(m, type = "link")[1:10]))
  )

  # Cross-check against the glmmTMB fit of the same model
  if (!is.null(spec$compare)) {
    tf <- tmb_fits[[spec$compare]]$fit; to <- tmb_fits[[spec$compare]]$out
    y <- m@resp$y; eta_off <- m@resp$offset; X <- getME(m, "X"); grp <- getME(m, "flist")[[1]]
    stopifnot(identical(colnames(X), names(fixef(tf)$cond)))
    sd_l <- vc$sdcor[1]; sd_t <- to$varcorr$sdcor[1]
    if (is_nb) {
      fam_l <- getME(m, "glmer.nb.theta"); fam_t <- sigma(tf)
      ld <- function(th) function(yy, eta) dnbinom(yy, size = th, mu = exp(eta), log = TRUE)
      betad_l <- log(fam_l)
    } else if (fam$family == "poisson") {
      fam_l <- fam_t <- NA_real_
      ld <- function(unused) function(yy, eta) dpois(yy, exp(eta), log = TRUE)
      betad_l <- NULL
    } else {
      fam_l <- 1 / sigma(m)^2; fam_t <- 1 / sigma(tf)^2    # Gamma shapes
      ld <- function(k) function(yy, eta) dgamma(yy, shape = k, scale = exp(eta) / k, log = TRUE)
      betad_l <- log(fam_l)
    }
    p_l <- tf$fit$par
    p_l[names(p_l) == "beta"] <- fe; p_l[names(p_l) == "theta"] <- log(sd_l)
    if (!is.null(betad_l)) p_l[names(p_l) == "betad"] <- betad_l
    tmb_at_lme4 <- -tf$obj$fn(p_l)
    tf$obj$fn(tf$fit$par)
    eta_l <- as.numeric(X %*% fe + eta_off); eta_t <- as.numeric(X %*% fixef(tf)$cond + eta_off)
    cc <- list(
      glmmTMB_id = spec$compare,
      glmmTMB_logLik = to$logLik, lme4_logLik = as.numeric(ll),
      lme4_estimates = list(fixef = named(fe), re_sd = sd_l, family_parameter = fam_l),
      glmmTMB_estimates = list(fixef = to$fixef, re_sd = sd_t, family_parameter = fam_t),
      family_parameter = if (is_nb) "NB2 size theta" else if (fam$family == "poisson") "none" else "Gamma shape (lme4: 1/sigma(fit)^2; glmmTMB: 1/sigma(fit)^2 = exp(betad))",
      glmmTMB_laplace_at_lme4_estimates = tmb_at_lme4,
      agq40_at_lme4_estimates = agq_loglik(y, eta_l, grp, sd_l, ld(fam_l)),
      agq40_at_glmmTMB_estimates = agq_loglik(y, eta_t, grp, sd_t, ld(fam_t)),
      laplace1_at_glmmTMB_estimates = agq_loglik(y, eta_t, grp, sd_t, ld(fam_t), nodes = 1),
      note = "agq40: adaptive Gauss-Hermite (40 nodes per group, R code in tools/family_references.R) of the true marginal likelihood; laplace1: the same with one node (the Laplace approximation with the observed-information curvature, which is what glmmTMB/TMB computes)"
    )
    if (is_nb || fam$family == "poisson") {
      env <- new.env(); env$.d <- d
      cl <- call("glmer", formula = as.formula(spec$formula), data = quote(.d),
                 family = if (is_nb) call("negative.binomial", theta = fam_t) else quote(poisson()), devFunOnly = TRUE, control = tight)
      dfun <- eval(cl, env)
      cc$lme4_criterion_at_glmmTMB_estimates <- -0.5 * dfun(c(sd_t, unlist(to$fixef)))
    }
    out$cross_check <- cc
  }
  write_json_file(out, file.path(out_dir, paste0(spec$id, ".json")))
  summary_rows[[spec$id]] <- data.frame(id = spec$id, engine = "lme4", logLik = out$logLik,
                                        maxgrad = if (is.null(out$max_abs_gradient)) NA else out$max_abs_gradient,
                                        pdHess = if (is.null(out$hessian_pd)) NA else out$hessian_pd,
                                        conv = paste(c(out$optimizer_message, out$lme4_messages), collapse = "; "), polish = NA)
}

s <- do.call(rbind, summary_rows); rownames(s) <- NULL
s$logLik <- formatC(s$logLik, digits = 12, format = "g")
print(s, right = FALSE)
cat("total seconds:", round(as.numeric(difftime(Sys.time(), t_start, units = "secs")), 1), "\n")
