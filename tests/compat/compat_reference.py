"""Running the reference SDK (the ``fused`` package) in a subprocess for the compat tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def run_reference(script: str, out: Path, **env: str) -> Any:
    """Run ``tests/compat/<script> <out>`` in a subprocess whose environment has no ``FUSED_*``
    variable (plus ``env``), so the reference SDK's local engine runs as shipped; returns the
    JSON it wrote to ``out``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FUSED_")}
    proc = subprocess.run(
        [sys.executable, str(HERE / script), str(out)],
        cwd=HERE,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"reference run failed:\n{proc.stdout[-3000:]}\n{proc.stderr}"
    return json.loads(out.read_text())
