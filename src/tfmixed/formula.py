"""Parse lme4 model formulas into a fixed-effects formula and random-effects term specifications.

The fixed part is left to formulaic; this module only finds the parenthesised random-effects
terms ``(expr | group)`` and expands lme4's shorthands:

* ``(x || g)``  -> one uncorrelated term per column of ``x``'s model matrix,
* ``(1 | a/b)`` -> ``(1 | a) + (1 | b:a)`` (lme4's naming of the nested factor),
* ``(1 | a:b)`` -> one grouping factor whose levels are the observed ``a:b`` combinations,
* ``ar1(0 + factor(t) | g)``, ``cs(...)``, ``toep(...)``, ``diag(...)``, ``us(...)``, ``homcs(...)``,
  ``homdiag(...)`` -> one term with that covariance structure (:mod:`tfmixed.covariance_structures`).

>>> parsed = parse_formula("Reaction ~ Days + (Days | Subject)")
>>> parsed.fixed, [(t.expr, t.group) for t in parsed.random]
('Reaction ~ Days', [('Days', ('Subject',))])
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from .errors import FormulaError

_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$|^`[^`]+`$")


@dataclass(frozen=True)
class RandomTermSpec:
    """One random-effects term before it meets the data.

    ``expr`` is the left side of the bar (a formulaic right-hand side such as ``"1 + Days"``);
    ``group`` the grouping variables whose interaction defines the levels; ``name`` lme4's label
    for the grouping factor; ``split_columns`` is True for ``||`` (each model-matrix column becomes
    its own term with an independent variance).
    """

    expr: str
    group: tuple[str, ...]
    name: str
    split_columns: bool = False
    #: the covariance structure's code (``us``, ``diag``, ``cs``, ``ar1``, ...) from ``ar1(0 + f | g)``;
    #: ``us`` for a plain ``(expr | g)``
    structure: str = "us"


@dataclass(frozen=True)
class ParsedFormula:
    """A parsed lme4 formula: the response, the fixed-effects formula, and the random terms."""

    response: str
    fixed_rhs: str
    random: tuple[RandomTermSpec, ...] = field(default_factory=tuple)
    #: expressions inside ``offset(...)`` terms of the fixed part (added to the linear predictor, no coefficient)
    offsets: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fixed(self) -> str:
        """The fixed-effects part as a formulaic two-sided formula."""
        return f"{self.response} ~ {self.fixed_rhs}"

    @property
    def variables(self) -> set[str]:
        """Names of the grouping variables used by the random terms."""
        return {name for term in self.random for name in term.group}


def _top_level_split(text: str, separator: str) -> list[str]:
    """Split ``text`` on ``separator`` occurring outside parentheses."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        char = text[i]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"unbalanced ')' in formula part {text!r}")
        elif depth == 0 and text.startswith(separator, i):
            parts.append(text[start:i])
            i += len(separator)
            start = i
            continue
        i += 1
    if depth != 0:
        raise FormulaError(f"unbalanced '(' in formula part {text!r}")
    parts.append(text[start:])
    return parts


def _signed_terms(text: str) -> list[tuple[str, str]]:
    """Top-level terms of a sum with their signs: "a + (x | g) - 1" -> [("+", "a"), ("+", "(x | g)"), ("-", "1")]."""
    terms, depth, start, sign = [], 0, 0, "+"
    for index, char in enumerate(text):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"unbalanced ')' in formula part {text!r}")
        elif depth == 0 and char in "+-" and not _is_exponent_sign(text, index):
            terms.append((sign, text[start:index]))
            sign, start = char, index + 1
    if depth != 0:
        raise FormulaError(f"unbalanced '(' in formula part {text!r}")
    terms.append((sign, text[start:]))
    # a leading sign leaves an empty first term ("-1 + x"), which is no term
    if not terms[0][1].strip() and len(terms) > 1:
        terms = terms[1:]
    return terms


def _is_exponent_sign(text: str, index: int) -> bool:
    """The sign of a number's exponent (1e-5) is not a formula operator."""
    return index >= 2 and text[index - 1] in "eE" and text[index - 2].isdigit()


def _matching_paren(text: str, open_index: int) -> int:
    depth = 0
    for index in range(open_index, len(text)):
        if text[index] == "(":
            depth += 1
        elif text[index] == ")":
            depth -= 1
            if depth == 0:
                return index
    raise FormulaError(f"unbalanced '(' in formula {text!r}")


def _strip_outer_parens(text: str) -> str:
    text = text.strip()
    while text.startswith("(") and _matching_paren(text, 0) == len(text) - 1:
        text = text[1:-1].strip()
    return text


def _group_variables(group: str, formula: str) -> list[tuple[str, ...]]:
    """Expand the grouping expression into a list of factor interactions (outermost first)."""
    group = _strip_outer_parens(group)
    if not group:
        raise FormulaError(f"empty grouping factor in random term of {formula!r}")
    nested = [part.strip() for part in _top_level_split(group, "/")]
    expanded: list[tuple[str, ...]] = []
    prefix: tuple[str, ...] = ()
    for level in nested:
        names = tuple(name.strip().strip("`") for name in level.split(":"))
        for name in names:
            if not name or not _NAME.match(name):
                raise FormulaError(
                    f"grouping factor {level!r} in {formula!r} must be a column name or an interaction a:b of column names"
                )
        # lme4 names the nested factor innermost-first (b:a for a/b); keep that label and level order.
        prefix = names + prefix
        expanded.append(prefix)
    return expanded


#: lme4 2.0's and glmmTMB's covariance-structure wrappers of a random term, ``ar1(0 + factor(t) | g)``
STRUCTURE_CODES = ("us", "diag", "homdiag", "cs", "homcs", "ar1", "toep")
_STRUCTURED = re.compile(rf"^({'|'.join(STRUCTURE_CODES)})\s*\(")


def _structured_term(stripped: str) -> tuple[str, str] | None:
    """(structure code, the term inside) of ``ar1(0 + f | g)``, or None for anything else."""
    match = _STRUCTURED.match(stripped)
    if not match or _matching_paren(stripped, match.end() - 1) != len(stripped) - 1:
        return None
    inner = stripped[match.end() : -1].strip()
    return (match.group(1), inner) if len(_top_level_split(inner, "|")) > 1 else None


def _random_terms(inner: str, formula: str, structure: str = "us") -> list[RandomTermSpec]:
    double = _top_level_split(inner, "||")
    if len(double) == 2 and structure != "us":
        raise FormulaError(f"{structure}({inner}) in {formula!r}: '||' already makes the effects independent; "
                           f"write {structure}({inner.replace('||', '|')}) or diag(...)")
    if len(double) == 2:
        expr, group, split = double[0], double[1], True
    elif len(double) == 1:
        single = _top_level_split(inner, "|")
        if len(single) != 2:
            raise FormulaError(f"random term ({inner}) in {formula!r} must have exactly one '|' or '||'")
        expr, group, split = single[0], single[1], False
    else:
        raise FormulaError(f"random term ({inner}) in {formula!r} has more than one '||'")
    expr = expr.strip()
    if not expr:
        raise FormulaError(f"random term ({inner}) in {formula!r} has nothing left of the bar; use (1 | g)")
    return [
        RandomTermSpec(expr=expr, group=names, name=":".join(names), split_columns=split, structure=structure)
        for names in _group_variables(group, formula)
    ]


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4 formula ``y ~ fixed + (expr | group) + ...`` into its parts.

    >>> [t.name for t in parse_formula("y ~ 1 + (1 | batch/cask)").random]
    ['batch', 'cask:batch']
    """
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string, got {type(formula).__name__}")
    sides = formula.split("~")
    if len(sides) != 2:
        raise FormulaError(f"formula {formula!r} must contain exactly one '~' with the response on its left")
    response, rhs = sides[0].strip(), sides[1].strip()
    if not response:
        raise FormulaError(f"formula {formula!r} has no response left of '~'")
    if not rhs:
        raise FormulaError(f"formula {formula!r} has no right-hand side")

    random: list[RandomTermSpec] = []
    fixed_parts: list[str] = []
    offsets: list[str] = []
    for sign, part in _signed_terms(rhs):
        stripped = part.strip()
        if not stripped:
            raise FormulaError(f"formula {formula!r} has an empty term (a '+' or '-' with nothing beside it)")
        inner = _strip_outer_parens(stripped)
        if stripped.startswith("(") and len(_top_level_split(inner, "|")) > 1:
            if sign == "-":
                raise FormulaError(f"formula {formula!r} subtracts a random term {stripped!r}; only '+' adds them")
            random.extend(_random_terms(inner, formula))
            continue
        structured = _structured_term(stripped)
        if structured is not None:
            if sign == "-":
                raise FormulaError(f"formula {formula!r} subtracts a random term {stripped!r}; only '+' adds them")
            random.extend(_random_terms(structured[1], formula, structure=structured[0]))
            continue
        if stripped.startswith("offset(") and _matching_paren(stripped, 6) == len(stripped) - 1:
            inner = stripped[7:-1].strip()
            if not inner or sign == "-":
                raise FormulaError(f"offset() in {formula!r} needs an expression added with '+', e.g. offset(log(exposure))")
            offsets.append(inner)
            continue
        if "|" in stripped:
            raise FormulaError(f"random term {stripped!r} in {formula!r} must be enclosed in parentheses: (expr | group)")
        fixed_parts.append(stripped if sign == "+" else f"- {stripped}")
    fixed_rhs = " + ".join(fixed_parts).replace("+ - ", "- ") if fixed_parts else "1"
    if fixed_rhs.startswith("- "):
        fixed_rhs = "1 " + fixed_rhs  # R: "y ~ -1 + x" is "y ~ 1 - 1 + x"
    return ParsedFormula(response=response, fixed_rhs=fixed_rhs, random=tuple(random), offsets=tuple(offsets))


_IDENTIFIER = r"(?:`[^`]+`|[A-Za-z_.][A-Za-z0-9_.]*)"


def _deparse_r(expression: str) -> str:
    """R's printed form of an arithmetic expression: spaces around + - * / and comparisons, none around ^."""
    text = re.sub(r"\s+", "", expression)
    # the sign of a number's exponent (1e-5) is no operator: hide it while spacing the operators
    text = re.sub(r"(\d[eE])([+-])(?=\d)", lambda m: m.group(1) + ("\x01" if m.group(2) == "+" else "\x02"), text)
    text = re.sub(r"(?<=[\w.)\]])([+\-*/]|==|!=|<=|>=|<|>)(?=[\w.(`])", r" \1 ", text)
    return text.replace("\x01", "+").replace("\x02", "-")


def _interactions_in_appearance_order(rhs: str, order: dict[str, int]) -> str:
    """R names an interaction's variables in order of their first appearance in the formula (a:b, not b:a)."""
    pattern = re.compile(rf"(?<![\w.`(]){_IDENTIFIER}(?::{_IDENTIFIER})+(?![\w.`(])")

    def reorder(match: re.Match) -> str:
        names = match.group(0).split(":")
        return ":".join(sorted(names, key=lambda name: order.get(name.strip("`"), len(order))))

    return pattern.sub(reorder, rhs)


def translate_r_syntax(rhs: str, response: str = "") -> tuple[str, dict[str, str]]:
    """R's formula functions as formulaic evaluates them, and formulaic's column names -> lme4's.

    ``I(x^2)`` is a power in R (formulaic reads ``^`` as XOR), ``factor(x)`` is formulaic's ``C(x)``;
    interactions list their variables in order of first appearance. The returned map renames formulaic's
    names of those terms to R's (``I(Days ** 2)`` -> ``I(Days^2)``, ``C(Time)`` -> ``factor(Time)``).

    >>> translate_r_syntax("Days + I(Days^2) + factor(Time)")
    ('Days + I(Days ** 2) + C(Time)', {'I(Days ** 2)': 'I(Days^2)', 'C(Time)': 'factor(Time)'})
    """
    renames: dict[str, str] = {}
    out, index = [], 0
    for match in re.finditer(r"(?<![\w.])(I|factor)\(", rhs):
        if match.start() < index:
            continue
        close = _matching_paren(rhs, match.end() - 1)
        inner = rhs[match.end() : close]
        if match.group(1) == "I":
            python = f"I({_deparse_python(inner)})"
            renames[python] = f"I({_deparse_r(inner)})"
        else:
            python = f"C({inner.strip()})"
            renames[python] = f"factor({inner.strip()})"
        out.append(rhs[index : match.start()] + python)
        index = close + 1
    text = _expand_products("".join(out) + rhs[index:])
    names = re.findall(_IDENTIFIER, f"{response} {rhs}")
    order: dict[str, int] = {}
    for name in names:
        order.setdefault(name.strip("`"), len(order))
    return _interactions_in_appearance_order(text, order), renames


def _expand_products(rhs: str) -> str:
    """R's a * b * c as a + b + c + a:b + a:c + b:c + a:b:c, so the interactions are named by the appearance rule."""
    pieces, expanded = [], False
    for sign, term in _signed_terms(rhs):
        names = [name.strip() for name in term.split("*")]
        if len(names) > 1 and all(re.fullmatch(_IDENTIFIER, name) for name in names):
            term = " + ".join(":".join(c) for k in range(1, len(names) + 1) for c in itertools.combinations(names, k))
            term, expanded = (f"({term})" if sign == "-" else term), True
        pieces.append(f"{sign} {term.strip()}")
    if not expanded:
        return rhs
    return " ".join(pieces).removeprefix("+ ")


def _deparse_python(expression: str) -> str:
    """An R arithmetic expression as Python: ^ is **, in formulaic's spacing."""
    return _deparse_r(expression.replace("**", "^")).replace("^", " ** ")
