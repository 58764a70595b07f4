"""`make demo` runs the real sidecars and test upstream as processes and tells the whole story.

The metering act must still end in an exact match with what the provider served; the budget act must
climb every rung of the ladder with what the app sees at each (the model switch, the 429's Retry-After);
the ThinkTier act must recommend a budget for every class; and the picture must be a PNG of the size drawn.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt

from tokenbudget_testing import demo_plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_demo_meters_climbs_the_ladder_calibrates_and_draws(tmp_path: Path) -> None:
    png = tmp_path / "demo.png"
    out = subprocess.run([sys.executable, "-m", "tokenbudget_testing.demo", "--out", str(png), "--pace", "0"],
                         capture_output=True, text=True, timeout=240, check=False,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    metering = text.split("2. A team budget")[0].rsplit("\n", 1)[0]  # up to the next act's rule
    assert "the sidecar metered" in metering
    assert re.search(r"the sidecar metered \d+: exact\.$", metering.rstrip()), metering[-1500:]
    assert "qwen-max" in metering
    assert "1 provider error" in metering

    ladder = text.split("2. A team budget")[1].split("3. A ThinkTier")[0]
    stages = re.findall(r"call +\d+ +(Alert|Throttle|Downgrade|Block) at (\d+)%", ladder)
    assert [s for s, _ in stages] == ["Alert", "Throttle", "Downgrade", "Block"], ladder
    assert "the app asked for gpt-4o and got gpt-4o-mini (x-tokenbudget-downgraded)" in ladder
    assert re.search(r"429 RateLimitError in the SDK, Retry-After \d+ s", ladder), ladder
    assert re.search(r"DryRun twin: all 80 admitted", ladder), ladder

    thinking = text.split("3. A ThinkTier")[1]
    for klass in ("lookup", "support", "research"):
        assert re.search(rf"{klass} +[\d,]+ -> +[\d,]+ thinking tokens a call", thinking), thinking

    assert text.rstrip().endswith(f"Wrote {png.resolve()}")
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (int(demo_plot.WIDTH_IN * demo_plot.DPI), int(demo_plot.HEIGHT_IN * demo_plot.DPI))
    pixels = plt.imread(png)  # decodes: a whole image, not just a header
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0.05  # something was drawn
