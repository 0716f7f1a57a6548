"""The commands `make demo` prints at the end run as printed: curl, the OpenAI SDK and the CLI."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from loraplex.cli_demo import next_steps
from training.tasks import answer

pytestmark = pytest.mark.e2e


def test_the_printed_next_steps_run_as_printed(stack, tmp_path):
    entry = stack.tenants["acme"]
    tenants = {"acme": {"api_key": entry["key"], "adapters": [entry["adapter"]]}}
    info = {"gateway_url": stack.url, "admin_url": stack.admin_url, "admin_key": stack.admin_key, "tenants": tenants}
    (tmp_path / "stack.json").write_text(json.dumps(info))
    text = next_steps(stack.url, tenants)
    assert text.rstrip().endswith("make down")
    script = text.replace("make down", "")  # the session's stack stays up
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAPLEX_")}
    env |= {"LORAPLEX_VAR_DIR": str(tmp_path), "COLUMNS": "200"}  # a terminal's width: tables unwrapped
    out = subprocess.run(["bash", "-eu", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    expected = answer("reverse", "loraplex")
    assert out.stdout.count(expected) == 2, out.stdout  # curl's JSON and the SDK's print
    assert "eff. rank" in out.stdout and "acme" in out.stdout  # the CLI's tables: adapters, then tenants
