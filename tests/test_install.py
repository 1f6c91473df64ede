"""The core install works without TensorFlow (issue 26): lmer, glmer with the new families, inference and the
CLI never import it, and what needs it raises an error naming the extra."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["tensorflow"] = None  # as if it were not installed: importing it raises ImportError
    sys.modules["keras"] = None
    import warnings
    import tfmixed as tm
    sleep = tm.datasets.load("sleepstudy")
    fit = tm.lmer("Reaction ~ Days + (Days | Subject)", sleep, verbose=False)
    assert abs(fit.deviance - 1743.628) < 1e-3
    fit.confint("Wald"); fit.satterthwaite_df; fit.predict(sleep.head(2), interval="prediction")
    nb = tm.glmer("count ~ mined + (1 | site)", tm.datasets.load("Salamanders"), family="negative_binomial",
                  verbose=False)
    assert abs(nb.loglik + 869.166148) < 1e-5
    for name, call in [("mackay", lambda: tm.mackay), ("MixedModule", lambda: tm.MixedModule),
                       ("LogDensityFamily", lambda: tm.families.LogDensityFamily("f", lambda y, mu, p: y)),
                       ("iterative", lambda: tm.lmer("Reaction ~ Days + (1 | Subject)", sleep, backend="iterative",
                                                     verbose=False))]:
        try:
            call()
        except tm.OptionalDependencyError as error:
            assert "tfmixed[tensorflow]" in str(error), error
        else:
            raise AssertionError(f"{name} worked without TensorFlow")
    assert "tensorflow" not in [m for m in sys.modules if sys.modules[m] is not None]
    from tfmixed.cli import main
    assert main(["demo", "--quiet"]) == 0
    print("core ok")
""")


def test_the_core_runs_without_tensorflow():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "core ok" in result.stdout
    assert "MacKay's loop (the seed's TensorFlow module) skipped" in result.stdout
    assert "pip install 'tfmixed[tensorflow]'" in result.stdout
