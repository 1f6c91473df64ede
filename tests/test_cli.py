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
