"""The seams stay declared: kernels and estimators read capabilities their collaborators declare, never probe
for attributes (issue 28)."""

import re
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "tfmixed"


def test_no_capability_sniffing_in_kernels_and_estimators():
    offenders = []
    for folder in ("kernels", "estimators"):
        for path in sorted((SOURCE / folder).glob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if re.search(r"\b(hasattr|getattr)\(", line):
                    offenders.append(f"{path.relative_to(SOURCE)}:{number}: {line.strip()}")
    assert offenders == []


def test_couplings_declare_their_capabilities():
    from tfmixed.kernels import coupling

    declared = {cls.__name__: (cls.takes_dense, cls.reads_lower_triangle_only, cls.holds_split_parts)
                for cls in (coupling.DenseCoupling, coupling.SparseCoupling, coupling.PatternCoupling,
                            coupling.SplitCoupling)}
    assert declared == {"DenseCoupling": (True, False, False), "SparseCoupling": (False, False, False),
                        "PatternCoupling": (False, True, False), "SplitCoupling": (False, True, True)}


def _imports(path: Path, module: str, local: bool) -> set[str]:
    """The tfmixed modules ``path`` imports, at module level or (``local``) inside its functions."""
    import ast

    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = [n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)] if local else tree.body
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            # "from .. import x" names modules of the package, not the package's __init__
            found |= {f"{base}.{alias.name}" for alias in node.names} | ({base} if node.module else set())
    return found


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SOURCE.rglob("*.py"):
        name = ".".join(path.relative_to(SOURCE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def test_no_import_circles():
    """No cycle among module-level imports, and none hidden in a function: results never import the front doors
    (lmm, glmm) and refitting never imports results."""
    modules = _modules()
    graph = {name: _imports(path, name, local=False) & set(modules) for name, path in modules.items()}

    def reaches(start, target, seen):
        for nxt in graph[start] - seen:
            if nxt == target or reaches(nxt, target, seen | {nxt}):
                return True
        return False

    assert [name for name in graph if reaches(name, name, set())] == []
    hidden = {name: _imports(path, name, local=True) for name, path in modules.items()}
    assert not any(target in ("tfmixed.lmm", "tfmixed.glmm") for name, targets in hidden.items()
                   if name.startswith("tfmixed.results") for target in targets)
    assert not any(t.startswith("tfmixed.results") for t in hidden["tfmixed.refit"] | graph["tfmixed.refit"])


def test_results_and_refits_use_the_fits_public_api():
    """A result module reads another object's state only through public names: ``fit._beta`` from a module
    function would tie it to one class's internals (the mixins' own ``self._...`` are theirs)."""
    offenders = []
    for path in sorted([*(SOURCE / "results").glob("*.py"), SOURCE / "refit.py"]):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = re.sub(r"\bself\._", "self.", line.split("#")[0])
            if re.search(r"\w\._[a-z]\w*", code) and not re.search(r"\b(np|sp|pd|scipy|numpy)\._", code):
                offenders.append(f"{path.relative_to(SOURCE)}:{number}: {line.strip()}")
    assert offenders == []


def test_partitioned_and_in_memory_designs_share_one_model_spec():
    """Both builders make their spec with model_spec.build_model_spec and check with checks.py (issue 28)."""
    for name in ("design.py", "partitioned.py"):
        text = (SOURCE / name).read_text()
        assert "build_model_spec(" in text and "from .checks import" in text, name
        assert "get_model_matrix(" not in text, f"{name} evaluates formulaic specs itself instead of the ModelSpec"
