from tfmixed.cli import main


def test_demo_prints_the_sleepstudy_fit(capsys):
    assert main(["demo", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "REML criterion at convergence: 1743.6" in out
    assert "MacKay loop converged" in out
    assert "CovarianceCollapseWarning" in out
    assert "intercept 612.09" in out
    assert "EM (+E Cov(b|y)" in out and "correlation 0.066" in out
    assert "Generalized linear mixed model fit by maximum likelihood (Laplace Approximation)" in out
    assert "-2 log L 184.052564" in out
    assert "refitting model(s) with ML (instead of REML)" in out and "42.1393" in out
    assert "14.381" in out and "37.716" in out  # lme4's profile interval of the intercept SD: 14.381, 37.716


def test_fit_command_prints_the_summary_and_writes_json(tmp_path, capsys):
    import json

    import tfmixed as tm

    data = tmp_path / "sleep.csv"
    tm.datasets.load("sleepstudy").to_csv(data, index=False)
    out = tmp_path / "fit.json"
    code = main(["fit", str(data), "Reaction ~ Days + (Days | Subject)", "--anova", "--confint", "Wald", "--json",
                 str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "REML criterion at convergence: 1743.6" in printed
    assert "Type III Analysis of Variance Table with Satterthwaite's method" in printed
    record = json.loads(out.read_text())
    assert abs(record["deviance"] - 1743.62827196) < 1e-6
    assert abs(record["coefficients"]["Days"]["Estimate"] - 10.467285959596) < 1e-6
    assert abs(record["anova"]["Days"]["F value"] - 45.8529615558586) < 1e-4
    assert record["confint"]["sigma"]["2.5 %"] is None  # NaN for variance parameters, as lme4's Wald
    assert main(["fit", str(data), "Reaction ~ Days + (Days | Subject)", "--ml", "--quiet"]) == 0
    assert "AIC" in capsys.readouterr().out


def test_glmer_command(tmp_path, capsys):
    import tfmixed as tm

    data = tmp_path / "cbpp.tsv"
    tm.datasets.load("cbpp").to_csv(data, index=False, sep="\t")
    assert main(["glmer", str(data), "cbind(incidence, size - incidence) ~ period + (1 | herd)", "--family",
                 "binomial", "--quiet"]) == 0
    assert "Family: binomial  ( logit )" in capsys.readouterr().out


def test_fit_command_reports_bad_files_and_formulas(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("y,x,g\n1,2,a\n2,3,a\n3,1,b\n4,5,b\n5,2,c\n")
    assert main(["fit", str(tmp_path / "missing.csv"), "y ~ x + (1 | g)"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["fit", str(data), "y ~ x + 1 | g"]) == 2
    assert "must be enclosed in parentheses" in capsys.readouterr().err
    assert main(["fit", str(data), "y ~ x + (1 | h)"]) == 2
    assert "['h']" in capsys.readouterr().err
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x00garbage\x00")
    assert main(["fit", str(binary), "y ~ x + (1 | g)"]) == 2
    assert "tfmixed fit: error:" in capsys.readouterr().err


def test_version_and_case_insensitive_choices(tmp_path, capsys):
    import pytest

    import tfmixed as tm

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and f"tfmixed {tm.__version__}" in capsys.readouterr().out
    data = tmp_path / "sal.csv"
    tm.datasets.load("Salamanders").to_csv(data, index=False)
    assert main(["glmer", str(data), "count ~ mined + (1 | site)", "--family", "NEGATIVE_BINOMIAL", "--quiet",
                 "--confint", "wald"]) == 0
    printed = capsys.readouterr().out
    assert "Family: negative_binomial(size = 0.639)" in printed and "Wald 95% confidence intervals" in printed


def test_json_has_full_precision_and_null_for_nan(tmp_path, capsys):
    import json

    import tfmixed as tm

    data = tmp_path / "sal.csv"
    tm.datasets.load("Salamanders").to_csv(data, index=False)
    out = tmp_path / "fit.json"
    assert main(["glmer", str(data), "count ~ mined + (1 | site)", "--family", "poisson", "--ziformula", "~ mined",
                 "--confint", "Wald", "--level", "0.9", "--json", str(out), "--quiet"]) == 0
    assert "Wald 90% confidence intervals" in capsys.readouterr().out
    text = out.read_text()
    assert "NaN" not in text
    record = json.loads(text)
    fit = tm.glmer("count ~ mined + (1 | site)", tm.datasets.load("Salamanders"), family="poisson",
                   ziformula="~ mined", verbose=False)
    assert record["loglik"] == fit.loglik  # repr round-trips every digit
    assert record["confint"]["sd_(Intercept)|site"]["5 %"] is None
    assert record["confint_level"] == 0.9 and "zi_minedyes" in record["family_parameters"]


def test_output_path_is_checked_before_the_fit_and_messages_name_flags(tmp_path, capsys):
    import numpy as np

    import tfmixed as tm

    data = tmp_path / "sleep.csv"
    frame = tm.datasets.load("sleepstudy")
    frame.loc[3, "Days"] = np.nan
    frame.to_csv(data, index=False)
    assert main(["fit", str(data), "Reaction ~ Days + (1 | Subject)", "--json", str(tmp_path / "no" / "f.json")]) == 2
    error = capsys.readouterr().err
    assert "--json" in error and "does not exist" in error
    assert main(["fit", str(data), "Reaction ~ Days + (1 | Subject)", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "--drop-missing" in error and "missing='drop'" not in error


def test_bootstrap_intervals_from_the_cli_are_reproducible(tmp_path, capsys):
    import json

    import tfmixed as tm

    data = tmp_path / "dye.csv"
    tm.datasets.load("Dyestuff").to_csv(data, index=False)
    records = []
    for name in ("a.json", "b.json"):
        assert main(["fit", str(data), "Yield ~ 1 + (1 | Batch)", "--confint", "boot", "--nboot", "20", "--seed",
                     "7", "--json", str(tmp_path / name), "--quiet"]) == 0
        records.append(json.loads((tmp_path / name).read_text())["confint"])
    assert records[0] == records[1]
