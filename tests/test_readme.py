"""Every README code block runs as pasted (issue 26): the Python blocks in one session, in order, and the
shell block of the CLI, in a temporary folder. The two set-up commands (they create virtual environments) are
run by CI itself and by hand on a fresh clone."""

import os
import re
import subprocess
import sys
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README.read_text(), re.S)
SET_UP = ("python3 -m venv",)


def test_python_blocks_run_as_pasted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    session: dict = {"__name__": "__main__"}
    blocks = [code for language, code in BLOCKS if language == "python"]
    assert len(blocks) >= 4
    for number, code in enumerate(blocks):
        exec(compile(code, f"README python block {number}", "exec"), session)
    assert (tmp_path / "ranef.png").stat().st_size > 1000


def test_shell_blocks_run_as_pasted(tmp_path):
    commands = [code for language, code in BLOCKS if language == "bash" and not code.startswith(SET_UP)]
    assert commands, "the README's CLI block"
    bin_dir = str(Path(sys.executable).parent)  # the environment's python and tfmixed scripts
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    for code in commands:
        result = subprocess.run(["bash", "-e", "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "REML criterion at convergence" in result.stdout
