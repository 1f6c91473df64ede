"""What the side-by-side benchmarks share: finding lme4, running an R script on a CSV, writing RESULTS.md."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
SET2 = HERE.parent / "tests" / "reference" / "set2" / "data"


def lme4_available() -> bool:
    if shutil.which("Rscript") is None:
        return False
    return subprocess.run(["Rscript", "-e", "suppressMessages(library(lme4))"], capture_output=True).returncode == 0


def run_r(script: str, frame: pd.DataFrame, *args: str) -> dict:
    """Run ``script`` on ``frame`` (written to a CSV, its path the first argument) and parse the JSON line it
    prints last."""
    with tempfile.TemporaryDirectory() as folder:
        csv, path = Path(folder) / "data.csv", Path(folder) / "fit.R"
        frame.to_csv(csv, index=False)
        path.write_text(script)
        out = subprocess.run(["Rscript", str(path), str(csv), *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_block(marker: str, block: str) -> None:
    """Replace (or append) the text between ``<!-- marker:begin -->`` and ``<!-- marker:end -->``."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    results = HERE / "RESULTS.md"
    text = results.read_text()
    block = f"{begin}\n{block}\n{end}"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text += "\n\n" + block + "\n"
    results.write_text(text)


def emit(marker: str, rows: list[str], footer: str, write: bool) -> None:
    """Print a benchmark's table (its markdown rows) and footer, and with ``write`` put them into RESULTS.md
    between the markers."""
    table = "\n".join(rows)
    print(table + footer)
    if write:
        write_block(marker, f"{table}\n{footer}")


def warm_median(fit, repeats: int):
    """(median wall time of ``repeats`` calls of ``fit`` after one warm-up call, the last result)."""
    result = fit()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fit()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def arguments(description: str, repeats_help: str) -> argparse.Namespace:
    """The benchmarks' command line: --repeats and --write."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=5, help=repeats_help)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    return parser.parse_args()
