"""The C++ kernels under AddressSanitizer and UndefinedBehaviorSanitizer (`kernels/sanitize.sh`): the kernels'
tests pass against a sanitizer build, and the same run fails, naming the error, on a copy of the sources with an
out-of-bounds write put into one kernel. A few minutes: the extension is compiled twice."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "kernels/sanitize.sh"


def _runtime(name: str) -> bool:
    "gcc prints the library's full path when it has it, and the bare name when not."
    try:
        out = subprocess.run(["c++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return False
    return os.path.isabs(out) and os.path.exists(out)


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (_runtime("libasan.so") and _runtime("libubsan.so")),
                                 reason="gcc's sanitizer runtimes (libasan, libubsan) are not installed")]


def run_sanitized(root: Path, *pytest_args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / SCRIPT), *pytest_args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})


def copy_of_sources(dst: Path) -> Path:
    "The working tree's files as git sees them (tracked and new, not ignored), copied to `dst`."
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout
    subprocess.run(f"tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C {dst} -xf -", shell=True, cwd=ROOT,
                   input=files, check=True)
    return dst


def test_kernels_tests_pass_under_sanitizers():
    r = run_sanitized(ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-6000:]
    assert " passed" in r.stdout and "sanitizer reports" not in r.stderr


def test_sanitizer_run_reports_an_out_of_bounds_write(tmp_path):
    root = copy_of_sources(tmp_path)
    kernel = root / "kernels/csrc/point_sample/cpu/point_sample_cpu.cpp"
    line = "for (int64_t ch = 0; ch < C; ++ch) oi[ch] = w0 * r0[ch]"
    text = kernel.read_text()
    assert text.count(line) == 1, "the kernel line this test breaks has changed: update the test"
    kernel.write_text(text.replace(line, line.replace("ch < C", "ch <= C")))      # one channel past each row
    r = run_sanitized(root, "-k", "point_sample_layouts")
    assert r.returncode != 0, r.stdout[-3000:]
    assert "AddressSanitizer: heap-buffer-overflow" in r.stderr, r.stderr[-4000:]
    assert "point_sample_cpu.cpp" in r.stderr
