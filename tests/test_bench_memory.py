"""``python -m bench.memory``: the RSS each import step adds, and the split when ready."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_report_names_each_step_and_both_processes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--runs", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([\d.]+) \|", done.stdout, re.MULTILINE))
    assert {"python", "aiohttp, uvloop", "pydantic", "the sidecar's modules", "its config read"} <= rows.keys()
    # Ready: the sidecar loads more than the pass-through, and its RSS is its two parts.
    assert float(rows["sidecar (cache off)"]) > float(rows["pass-through"]) > float(rows["python"])
    parts = re.search(r"^\| sidecar \(cache off\) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", done.stdout, re.MULTILINE)
    assert parts is not None
    rss, anon, file = map(float, parts.groups())
    assert abs(anon + file - rss) < 0.5
