"""The methods table in docs/mackay.md is what examples/mackay_methods.py prints."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mackay_methods_example_prints_the_documented_table():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "mackay_methods.py")], capture_output=True, text=True, check=True
    ).stdout
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    doc = (ROOT / "docs" / "mackay.md").read_text()
    for label, numbers in [
        ("EM (REML)", ["612.09", "35.072", "9.604", "654.94", "1743.6283"]),
        ("evidence (diagonal G)", ["627.57", "35.858", "653.58", "1743.6693"]),
        ("MacKay quick & dirty, diagonal", ["371.46", "29.146", "556.22", "1747.8065"]),
        ("MacKay quick & dirty, full", ["223.62", "20.534", "67.762", "694.14", "collapsed"]),
    ]:
        assert all(number in rows[label] for number in numbers), rows[label]
        assert all(number in doc for number in numbers)
    assert "[[612.09    9.604] [  9.604  35.072]]" in out and "[[612.09    9.604] [  9.604  35.072]]" in doc
    assert "8.502e-10" in out and "8.502e-10" in doc
