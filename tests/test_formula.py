import pytest

from tfmixed import FormulaError, parse_formula


def names(formula):
    return [(t.expr.replace(" ", ""), t.group, t.name, t.split_columns) for t in parse_formula(formula).random]


@pytest.mark.parametrize(
    "formula, expected",
    [
        ("y ~ x + (1 | g)", [("1", ("g",), "g", False)]),
        ("y ~ x + (x | g)", [("x", ("g",), "g", False)]),
        ("y ~ x + (1 + x | g)", [("1+x", ("g",), "g", False)]),
        ("y ~ x + (0 + x | g)", [("0+x", ("g",), "g", False)]),
        ("y ~ x + (x || g)", [("x", ("g",), "g", True)]),
        ("y ~ 1 + (1 | a/b)", [("1", ("a",), "a", False), ("1", ("b", "a"), "b:a", False)]),
        ("y ~ 1 + (1 | a:b)", [("1", ("a", "b"), "a:b", False)]),
        ("y ~ 1 + (1 | a) + (1 | b) + (1 | c)", [("1", ("a",), "a", False), ("1", ("b",), "b", False), ("1", ("c",), "c", False)]),
        ("y ~ 1 + (1 | a/b/c)", [("1", ("a",), "a", False), ("1", ("b", "a"), "b:a", False), ("1", ("c", "b", "a"), "c:b:a", False)]),
    ],
)
def test_random_terms(formula, expected):
    assert names(formula) == expected


def test_fixed_part_keeps_everything_but_random_terms():
    parsed = parse_formula("Reaction ~ 1 + Days + (1 + Days | Subject)")
    assert parsed.response == "Reaction"
    assert parsed.fixed == "Reaction ~ 1 + Days"
    assert parse_formula("y ~ (1 | g)").fixed == "y ~ 1"
    assert parse_formula("y ~ 0 + x + (1 | g)").fixed_rhs == "0 + x"


@pytest.mark.parametrize(
    "formula, message",
    [
        ("y + x + (1 | g)", "exactly one '~'"),
        ("~ x + (1 | g)", "no response"),
        ("y ~ ", "no right-hand side"),
        ("y ~ x + (1 | g", "unbalanced"),
        ("y ~ x + 1 | g", "enclosed in parentheses"),
        ("y ~ x + ( | g)", "nothing left of the bar"),
        ("y ~ x + (1 | )", "empty grouping factor"),
        ("y ~ x + (1 | g | h)", "exactly one"),
        ("y ~ x + (1 | log(g))", "column name"),
        ("y ~ x + + (1 | g)", "empty term"),
    ],
)
def test_malformed_formulas(formula, message):
    with pytest.raises(FormulaError, match=message):
        parse_formula(formula)


def test_formula_must_be_text():
    with pytest.raises(FormulaError):
        parse_formula(42)
