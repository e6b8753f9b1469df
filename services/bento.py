"""``bentoml build`` of bentofile.yaml into the BentoML home of this ShopRec home (the DAG's build step).

Runs the CLI in a subprocess with ``BENTOML_HOME`` set, so the calling process never
imports BentoML with the wrong home. The Bento holds code and pinned requirements; the
model is not baked in: the service loads the production version from ``models_dir``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shoprec.config import REPO_ROOT, Settings


def build_bento(settings: Settings, model_tag: str | None = None, timeout_s: float = 600) -> dict:
    """Build the Bento; returns its tag (and the registered model tag it goes with)."""
    env = {**os.environ, "BENTOML_HOME": str(settings.bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("bentoml")), "build", "--output", "tag", str(REPO_ROOT)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s,
    )
    tag = next((line.split("__tag__:", 1)[1].strip() for line in result.stdout.splitlines() if "__tag__:" in line), None)
    if result.returncode != 0 or tag is None:
        raise RuntimeError(f"bentoml build failed ({result.returncode}): {(result.stderr or result.stdout)[-2000:]}")
    return {"bento_tag": tag, "model_tag": model_tag}
