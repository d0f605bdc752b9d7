"""What a result was made from: the code's git revision and a hash of the params.

Stamped on every decision, saved model and registry entry, so any number can be traced back
to the code and settings that produced it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path


def git_revision(root: Path = Path()) -> str:
    """The checked-out commit (12 hex digits), or "unknown" outside a Git work tree."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def params_hash(params_dump: dict) -> str:
    """A short, order-independent hash of a params dump."""
    text = json.dumps(params_dump, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
