"""The README's Python code blocks run as written and emit no warning (a user copying them sees none)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RUNNER = """
import runpy, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    runpy.run_path(sys.argv[1], run_name="__main__")
for warning in caught:
    print(f"WARNING {warning.category.__name__} {warning.filename}:{warning.lineno}: {warning.message}")
"""


def readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_has_the_python_examples_we_run():
    blocks = readme_python_blocks()
    assert len(blocks) == 2 and "mltm_loss" in blocks[0] and "from_audio_text_pretrained" in blocks[1]


@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_python_block_runs_without_warnings(index, tmp_path, aisfx_model_dir):
    (tmp_path / "aisfx9").symlink_to(aisfx_model_dir)  # the README converts the aisfx checkpoint to ./aisfx9
    script = tmp_path / f"block_{index}.py"
    script.write_text(readme_python_blocks()[index])
    done = subprocess.run([sys.executable, "-c", RUNNER, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                                            "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stdout.splitlines() if line.startswith("WARNING")]
    assert warnings == [], warnings
