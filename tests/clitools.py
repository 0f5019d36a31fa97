"""Running the real `qdq` command in tests, and checking its one-line errors."""
import subprocess
import sys


def run_qdq(*args, **kw):
    return subprocess.run([sys.executable, "-m", "qdq.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


def one_line_error(r, *needles, code=2):
    """``r`` failed with ``code`` and exactly one stderr line holding every needle, no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout[-300:], r.stderr[-500:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qdq: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
