"""From trained stage outputs to a BentoML model the service loads, and serving it locally.

`save_model` copies a serving bundle (`engine.save_bundle`) into BentoML's model store as
`shopflow:<version>`, where the version is the bundle's content hash: saving the same models
twice gives the same tag and stores nothing new. The model's metadata carries what `/version`
reports: the git revision, the data hash, the models' test metrics and, once the promotion
stage has run, the promotion time.

`build_bento` packs the service code and a saved model into a Bento (`bentoml build`, offline:
`lock_packages: false`); `serve` runs `bentoml serve` on 127.0.0.1 for a Bento or, from the
source tree, for a saved model.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.artifacts import files_hash, read_json, write_json
from pipelines.config import Params
from pipelines.engine import save_bundle
from pipelines.errors import StageInputError
from pipelines.processes import is_running, started_at, stop_process_tree
from pipelines.registry import Entry, Registry

log = logging.getLogger(__name__)

MODEL_NAME = "shopflow"
SERVICE = "bento.service:Shopflow"
ROOT = Path(__file__).resolve().parent.parent  # the project: bento/ and bentofile live here
MODELS = Path("data/models")
PREPARED = Path("data/prepared")
DRIFT_REFERENCE = Path("data/drift/reference")  # the drift stage's view of the training days


def bundle_settings(params: Params) -> dict:
    """What the engine needs to serve exactly as the stages evaluated."""
    return {
        "max_item_len": params.retriever.max_item_len,
        "max_query_len": params.retriever.max_query_len,
        "history_items": params.retriever.history_items,
        "rerank_max_len": params.reranker.max_len,
        "rerank_max_query_len": params.reranker.max_query_len,
        "candidates": params.reranker.candidates,
        "ann_min_items": params.serving.ann_min_items,
        "batch_size": params.serving.batch_size,
    }


def git_revision(root: Path = Path()) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
            text=True, check=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def tree_hash(folder: Path) -> str:
    """Content hash of every file under `folder` (relative names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def save_model(
    params: Params, models_dir: Path = MODELS, prepared_dir: Path = PREPARED,
    labels: dict[str, str] | None = None, metadata: dict | None = None,
    drift_reference: Path = DRIFT_REFERENCE,
) -> str:  # fmt: skip
    """Save the current stage outputs as a BentoML model; returns its tag. The model carries
    the drift reference of its training days, so that later drift checks compare against
    what it was trained on however old it gets."""
    import bentoml

    with tempfile.TemporaryDirectory(prefix="shopflow-bundle-") as tmp:
        staging = Path(tmp) / "bundle"
        info = {"model_name": MODEL_NAME}
        save_bundle(
            staging, retriever_dir=models_dir / "retriever", reranker_dir=models_dir / "reranker",
            prepared_dir=prepared_dir, settings=bundle_settings(params), info=info,
        )  # fmt: skip
        if (drift_reference / "window.json").exists():
            from pipelines.drift import REFERENCE

            shutil.copytree(drift_reference, staging / REFERENCE)
        else:
            log.warning("%s is missing: the model is saved without a drift reference (drift "
                        "checks will use each night's training days)", drift_reference)  # fmt: skip
        if params.serving.onnx != "none":
            choose_onnx(staging, params, prepared_dir)
        version = tree_hash(staging)
        tag = f"{MODEL_NAME}:{version}"
        try:
            existing = bentoml.models.get(tag)
            log.info("model %s is already in the store (%s)", tag, existing.path)
            return tag
        except bentoml.exceptions.NotFound:
            pass
        meta = {
            "model_version": version,
            "git_revision": git_revision(),
            "data_hash": files_hash(prepared_dir, "*.parquet"),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "metrics": _test_metrics(models_dir),
            **(metadata or {}),
        }
        with bentoml.models.create(
            tag, labels={"source": params.ingest.source, "model_version": version,
                         "data_hash": meta["data_hash"], "git_revision": meta["git_revision"],
                         **(labels or {})},
            metadata=meta, module="shopflow",
        ) as model:  # fmt: skip
            for path in staging.iterdir():
                path.rename(Path(model.path) / path.name)
        saved = str(model.tag)
    log.info("saved %s (version %s)", saved, version)
    return saved


def choose_onnx(bundle: Path, params: Params, prepared_dir: Path) -> dict:
    """Export the ONNX graphs, measure them on the test split and pick the runtime.

    int8 is used only when its NDCG@10 drop against torch is below
    `serving.max_int8_ndcg_drop`; otherwise fp32 is, and the reason is recorded. Without
    judged test queries nothing can be measured, so int8 is not offered.
    """
    import pandas as pd

    from pipelines import metrics as rank_metrics
    from pipelines.engine import SearchEngine
    from pipelines.onnx_runtime import export, measure

    export(bundle)
    info = read_json(bundle / "shopflow.json")
    wanted = params.serving.onnx
    judged_path = prepared_dir / "judgments.parquet"
    checks: dict = {}
    judged = pd.read_parquet(judged_path) if judged_path.exists() else None
    if judged is not None and (judged["split"] == "test").any():
        qrels = rank_metrics.qrels_from(judged[judged["split"] == "test"])
        checks = measure(lambda runtime: SearchEngine.load(bundle, runtime=runtime), list(qrels),
                         qrels, params.evaluation.relevant_at)  # fmt: skip
    chosen, reason = decide_onnx(wanted, checks, params.serving.max_int8_ndcg_drop)
    log.info("ONNX runtime: %s (asked %s: %s)", chosen, wanted, reason)
    decision = {"asked": wanted, "chosen": chosen, "reason": reason, "checks": checks}
    info["settings"]["onnx"] = chosen
    info["onnx"] = decision
    write_json(bundle / "shopflow.json", info)
    return decision


def decide_onnx(wanted: str, checks: dict, max_int8_drop: float) -> tuple[str, str]:
    """The runtime to serve with, and why: int8 only with a measured drop below the limit."""
    if wanted != "int8":
        return wanted, "as asked"
    if "int8" not in checks:
        return "fp32", "no judged test queries to measure the int8 NDCG@10 drop on"
    drop = checks["int8"]["ndcg_drop"]
    if drop >= max_int8_drop:
        return "fp32", f"int8 NDCG@10 drop {drop:.4f} is not below {max_int8_drop}"
    return "int8", f"int8 NDCG@10 drop {drop:.4f} is below {max_int8_drop}"


def _test_metrics(models_dir: Path) -> dict:
    out = {}
    for name in ("retriever", "reranker"):
        path = models_dir / name / "shopflow.json"
        if path.exists():
            out[name] = read_json(path).get("metrics", {})
    return out


def build_bento(model_tag: str, root: Path = ROOT) -> str:
    """`bentoml build` of bento/bentofile.yaml with `model_tag` packed; returns the Bento tag.

    The Bento is labelled with the model's version, so `find_bento` can reuse it."""
    import bentoml

    env = {**os.environ, "SHOPFLOW_MODEL": model_tag}
    before = {str(b.tag) for b in bentoml.list()}
    command = [sys.executable, "-m", "bentoml", "build", "-f", "bento/bentofile.yaml", ".",
               "--label", f"model_version={model_tag.split(':', 1)[1]}"]  # fmt: skip
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode:
        raise StageInputError(f"bentoml build failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    match = re.search(r'Successfully built Bento\(tag="([^"]+)"\)', done.stdout + done.stderr)
    if match:
        tag = match.group(1)
    else:
        tag = next(str(b.tag) for b in bentoml.list() if str(b.tag) not in before)
    log.info("built Bento %s with model %s", tag, model_tag)
    return tag


def find_bento(model_tag: str) -> str | None:
    """The newest Bento in the store built for `model_tag` (None when there is none)."""
    import bentoml

    version = model_tag.split(":", 1)[1]
    packing = [b for b in bentoml.list() if b.info.labels.get("model_version") == version]
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
        env=env or dict(os.environ), capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        raise StageInputError(f"Bento {bento_tag} is not in the store: {done.stderr[-500:]}")
    version = (json.loads(done.stdout).get("labels") or {}).get("model_version")
    if not version:
        raise StageInputError(f"Bento {bento_tag} was not built by shopflow (no model_version)")
    return f"{MODEL_NAME}:{version}"


def ensure_bento(entry: Entry) -> str:
    """The Bento of a registry entry: the recorded one if it is in the store, else one that
    packs its model, else built again from its model (which must still be in the store)."""
    import bentoml

    try:
        return str(bentoml.get(entry.bento_tag).tag)
    except (bentoml.exceptions.NotFound, TypeError, ValueError):
        pass
    try:
        bentoml.models.get(entry.model_tag)
    except bentoml.exceptions.NotFound:
        raise StageInputError(
            f"entry #{entry.id}: neither its Bento {entry.bento_tag} nor its model "
            f"{entry.model_tag} is in the BentoML store; restore the store or pick another entry"
        ) from None
    found = find_bento(entry.model_tag)
    if found:
        return found
    log.info("Bento %s is gone: rebuilding it from %s", entry.bento_tag, entry.model_tag)
    return build_bento(entry.model_tag)


def rollback(params: Params, to: str | int | None = None) -> Entry:
    """Re-point the champion to an earlier model; rebuild its Bento only if it is gone."""
    registry = Registry(params.promote.registry)
    target = registry.rollback_target(to)
    bento = ensure_bento(target)
    entry = registry.rollback(target.id, bento_tag=bento)
    log.info("rolled back: champion #%d is %s (Bento %s)", entry.id, entry.version, bento)
    return entry


def current_model(params: Params) -> str:
    """The current run's outputs saved as a BentoML model (no-op when already saved)."""
    if not (MODELS / "retriever" / "config.json").exists():
        raise StageInputError("no trained retriever under data/models: run `make run` first")
    return save_model(params)


def serve(
    params: Params, model: str | None = None, bento: str | None = None, port: int | None = None
) -> int:
    """`bentoml serve` on 127.0.0.1: a built `bento`, else the saved `model` (default: the
    current outputs) with the service from this source tree."""
    env = {**os.environ}
    if bento is None and model is None:
        champion = Registry(params.promote.registry).champion()
        if champion is not None and champion.kind == "model":
            bento = ensure_bento(champion)
            env["SHOPFLOW_PROMOTED_AT"] = champion.at
            log.info("serving the champion #%d %s", champion.id, champion.version)
        else:
            model = current_model(params)
            log.info("no promoted model yet: serving the current run's outputs (%s)", model)
    port = port or params.serving.port
    env["SHOPFLOW_MODEL"] = packed_model(bento) if bento else model
    base = f"http://127.0.0.1:{port}"
    print(f"serving {bento or model} on {base} (Ctrl-C stops it). Try:\n"
          f"  curl -s {base}/readyz\n"
          f"  curl -s -X POST {base}/search -H 'Content-Type: application/json' "
          "-d '{\"query\": \"oak coffee table\", \"k\": 5}'\n"
          f"  curl -s {base}/version", flush=True)  # fmt: skip
    command = [sys.executable, "-m", "bentoml", "serve", bento or SERVICE, "--host",
               "127.0.0.1", "--port", str(port)]  # fmt: skip
    return subprocess.call(command, env=env, cwd=None if bento else ROOT)


class RunningService:
    """`bentoml serve` of a Bento or a service on 127.0.0.1, in its own process group,
    stopped by pid; a context manager yielding the base URL once /readyz answers 200."""

    def __init__(
        self, target: str, port: int, env: dict[str, str] | None = None, cwd: Path = ROOT,
        log_path: Path | None = None, ready_timeout_s: float = 180.0,
    ) -> None:  # fmt: skip
        self.target, self.port, self.cwd = target, port, cwd
        self.env = {**os.environ, **(env or {})}
        if target != SERVICE:  # a Bento: serve the model it was built with, whatever the env
            self.env["SHOPFLOW_MODEL"] = packed_model(target, self.env)
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"shopflow-serve-{port}.log"
        self.ready_timeout_s = ready_timeout_s
        self.base = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        return self.start()

    def start(self) -> str:
        """Start the server in its own session (so it outlives whoever started it, until
        stopped by pid); the base URL once /readyz answers 200."""
        import httpx

        command = [sys.executable, "-m", "bentoml", "serve", self.target, "--host", "127.0.0.1",
                   "--port", str(self.port)]  # fmt: skip
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            command, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.process.poll() is not None:
                self.__exit__(None, None, None)
                raise StageInputError(f"the service exited:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return self.base
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise StageInputError(
                    f"not ready in {self.ready_timeout_s:.0f} s:\n{self.log()[-3000:]}"
                )
            time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process_tree(self.process.pid)
            self.process.wait()
        self._log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the deploy DAG: put the champion where params.deploy says ------------------------------


class DeployError(StageInputError):
    """The new champion could not be deployed; what served before still serves."""


def deploy_champion(params: Params) -> dict:
    """Deploy the registry's champion: `bentoml serve` on 127.0.0.1 (target `local`) or
    `bentoml deploy` to BentoCloud (target `bentocloud`). Repeating it changes nothing."""
    champion = Registry(params.promote.registry).champion()
    if champion is None or champion.kind != "model":
        raise DeployError(
            "the champion is the BM25 + popularity baseline: there is no model to deploy yet "
            "(a night must promote one first)"
        )
    bento = ensure_bento(champion)
    if params.deploy.target == "bentocloud":
        return deploy_to_bentocloud(bento, params.deploy.name)
    return serve_locally(bento, champion, params.serving.port, Path(params.deploy.state))


def deploy_to_bentocloud(bento: str, name: str) -> dict:
    """Create the BentoCloud deployment `name`, or roll it to `bento` (needs `bentoml cloud
    login`; the deployment's scaling and instance type are BentoCloud's settings)."""
    bentoml = [sys.executable, "-m", "bentoml"]
    exists = subprocess.run([*bentoml, "deployment", "get", name], capture_output=True, text=True)
    if exists.returncode == 0:
        command = [*bentoml, "deployment", "update", name, "--bento", bento]
    else:
        command = [*bentoml, "deploy", bento, "-n", name, "--strategy", "RollingUpdate"]
    log.info("BentoCloud: %s", " ".join(command[2:]))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise DeployError(
            f"`{' '.join(command[2:])}` failed:\n{(done.stderr or done.stdout)[-3000:]}"
        )
    return {"target": "bentocloud", "action": "updated" if exists.returncode == 0 else "created",
            "name": name, "bento": bento}  # fmt: skip


def _ready(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def serve_locally(bento: str, champion: Entry, port: int, state_dir: Path) -> dict:
    """Serve `bento` on 127.0.0.1:`port` in the background, replacing the service started
    last time (stopped by the pid recorded in `state_dir/service.json`). If the new one does
    not come up, the previous Bento is started again and the error names why."""
    import httpx

    state_file = state_dir / "service.json"
    previous = read_json(state_file) if state_file.exists() else None
    running = previous and is_running(previous["pid"], previous.get("process_started"))
    if running and previous["bento"] == bento and _ready(port):
        log.info("%s already serves on port %d (pid %d)", bento, port, previous["pid"])
        return {"target": "local", "action": "unchanged", **previous}
    if running:
        log.info("stopping %s (pid %d)", previous["bento"], previous["pid"])
        stop_process_tree(previous["pid"])
    state_dir.mkdir(parents=True, exist_ok=True)

    def start(tag: str, at: str | None) -> RunningService:
        service = RunningService(tag, port, env={"SHOPFLOW_PROMOTED_AT": at or ""},
                                 log_path=state_dir / "service.log")  # fmt: skip
        service.start()
        return service

    try:
        service = start(bento, champion.at)
        served = httpx.get(f"{service.base}/version", timeout=10).json()
        if served.get("model_version") != champion.version:
            service.stop()
            raise DeployError(f"{bento} serves model {served.get('model_version')}, not the "
                              f"champion's {champion.version}")  # fmt: skip
    except StageInputError as exc:
        if previous:
            log.error("the new Bento failed (%s): starting %s again", exc, previous["bento"])
            with contextlib.suppress(StageInputError):
                back = start(previous["bento"], previous.get("promoted_at"))
                write_json(
                    state_file,
                    {
                        **previous,
                        "pid": back.process.pid,
                        "process_started": started_at(back.process.pid),
                    },
                )
        raise DeployError(f"{bento} did not come up on 127.0.0.1:{port}: {exc}") from None
    state = {"pid": service.process.pid, "process_started": started_at(service.process.pid),
             "port": port, "url": service.base, "bento": bento,
             "version": champion.version, "entry": champion.id, "promoted_at": champion.at,
             "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
             "log": str(state_dir / "service.log")}  # fmt: skip
    write_json(state_file, state)
    log.info("serving %s (champion #%d) on %s, pid %d", bento, champion.id, service.base,
             service.process.pid)  # fmt: skip
    return {"target": "local", "action": "started", **state}


def stop_local(state_dir: Path) -> dict | None:
    """Stop the locally deployed service (by its recorded pid); None when none runs."""
    state_file = state_dir / "service.json"
    if not state_file.exists():
        return None
    state = read_json(state_file)
    alive = is_running(state["pid"], state.get("process_started"))
    stopped = alive and stop_process_tree(state["pid"])
    state_file.unlink()
    return {**state, "stopped": stopped}
