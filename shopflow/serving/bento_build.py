"""Bentos: the service code and one saved model, built offline through BentoML's Python API.

`bento/bentofile.yaml` packs the service and the library sub-packages it imports (globs) and sets
`lock_packages: false` (locking reaches the network). A Bento is labelled with the version of
the model it packs and a hash of the sources it packs (the bentofile, every file it
includes, the pinned requirements), so it is found again (`find_bento`) instead of being
rebuilt only while both are the same: a shopflow upgrade rebuilds the Bento of an unchanged
model. A served Bento is pinned to its own model (`packed_model`), whatever else the store
holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from shopflow.core.errors import StageInputError
from shopflow.serving.model_store import MODEL_NAME

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the project: bento/ and its bentofile live here
BENTOFILE = ROOT / "bento" / "bentofile.yaml"  # lists exactly what the service imports
MODEL_ENV = "SHOPFLOW_MODEL"  # the model the service declares (bento/service.py)
CHALLENGER_ENV = "SHOPFLOW_CHALLENGER"  # an online experiment's challenger, packed as well


@contextlib.contextmanager
def model_env(model_tag: str, challenger: str | None = None) -> Iterator[None]:
    """`SHOPFLOW_MODEL` (and `SHOPFLOW_CHALLENGER`) set while a build imports the service."""
    wanted = {MODEL_ENV: model_tag, CHALLENGER_ENV: challenger}
    before = {name: os.environ.get(name) for name in wanted}
    for name, value in wanted.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def build_bento(model_tag: str, challenger: str | None = None) -> str:
    """Build bento/bentofile.yaml with `model_tag` packed (and an online experiment's
    `challenger`); returns the Bento's tag.

    BentoML imports the service to find the model it declares, so the service module is
    re-imported (`reload`) with `SHOPFLOW_MODEL` pointing at this model: a process that builds
    twice packs each time the model it was asked for."""
    import bentoml

    version = model_tag.split(":", 1)[1]
    labels = {"model_version": version, "sources": sources_hash()}
    if challenger:
        labels["challenger_version"] = challenger.split(":", 1)[1]
    try:
        with model_env(model_tag, challenger):
            bento = bentoml.bentos.build_bentofile(
                str(BENTOFILE), build_ctx=str(ROOT), labels=labels, reload=True
            )
    except bentoml.exceptions.BentoMLException as exc:
        raise StageInputError(f"bentoml build of {model_tag} failed: {exc}") from exc
    log.info("built Bento %s with model %s", bento.tag, model_tag)
    return str(bento.tag)


def packed_files(patterns: list[str]) -> list[Path]:
    """The files the bentofile's `include` globs select (as BentoML selects them)."""
    return sorted({path for pattern in patterns for path in ROOT.glob(pattern) if path.is_file()})


def sources_hash() -> str:
    """A short hash of what a Bento packs besides the model: the bentofile, the files it
    includes and the requirements it installs."""
    import hashlib

    import yaml

    spec = yaml.safe_load(BENTOFILE.read_text(encoding="utf-8"))
    files = [BENTOFILE, *packed_files(spec.get("include", []))]
    requirements = (spec.get("python") or {}).get("requirements_txt")
    if requirements:
        files.append(ROOT / requirements)
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() if path.exists() else b"(missing)")
    return digest.hexdigest()[:16]


def find_bento(model_tag: str) -> str | None:
    """The newest Bento in the store built for `model_tag` from today's sources (None when
    there is none: a Bento of the same model with older service code is not reused)."""
    import bentoml

    version, sources = model_tag.split(":", 1)[1], sources_hash()
    packing = [
        b
        for b in bentoml.list()
        if b.info.labels.get("model_version") == version
        and b.info.labels.get("sources") == sources
        and "challenger_version" not in b.info.labels  # an experiment's Bento packs two
    ]
    packing.sort(key=lambda b: b.info.creation_time, reverse=True)
    return str(packing[0].tag) if packing else None


def packed_model(bento_tag: str, env: dict[str, str] | None = None) -> str:
    """The model a Bento was built for (its `model_version` label).

    The service declares its model by tag, and `bentoml serve <bento>` on a machine resolves
    that tag in the local store: without this pin, "shopflow:latest" would be the newest
    model saved there, not the one packed in the Bento (measured: a Bento served the model
    of a later promotion). In a container the Bento's own store holds only its model.
    Asked through the CLI, so that `env`'s BENTOML_HOME is the store read.
    """
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "get", bento_tag, "-o", "json"],
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise StageInputError(f"Bento {bento_tag} is not in the store: {done.stderr[-500:]}")
    version = (json.loads(done.stdout).get("labels") or {}).get("model_version")
    if not version:
        raise StageInputError(f"Bento {bento_tag} was not built by shopflow (no model_version)")
    return f"{MODEL_NAME}:{version}"
