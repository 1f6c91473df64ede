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
