"""Every file and folder shopflow reads or writes, declared once.

Paths are relative to the project root (where dvc.yaml and params.yaml live): DVC runs each
stage there, Airflow's tasks `cd` there, and the tests run stages inside a scratch folder
laid out the same way. `dvc.yaml` names the same paths; a test checks that the two agree.

Locations a user may move (the registry, the drift history, the local service's state, the
run report) are params, not constants: see `promote.registry`, `drift.history`,
`deploy.state` and `report.folder`.
"""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")  # the effective values every stage reads and DVC tracks
CONF = Path("conf")  # what params.yaml is composed from: config.yaml + profile/<name>.yaml
CHAMPION_POINTER = Path("champion.json")  # the registry's champion, where DVC can see it

# -- stage outputs (DVC-tracked) ---------------------------------------------------------
DATA = Path("data")
INGESTED = DATA / "ingested"
VALIDATED = DATA / "validated"
PREPARED = DATA / "prepared"
CORPUS = PREPARED / "corpus.txt"
RECOMMEND_POLICY = PREPARED / "recommend.json"  # the exclusion rule prepare resolved, and why
SPLITS = PREPARED / "splits.json"  # where the time splits start
MODELS = DATA / "models"
BASELINES = MODELS / "baselines"
BM25_SETTINGS = BASELINES / "bm25"  # the tuned BM25F settings every lexical search uses
RECOMMEND_BASELINE = BASELINES / "recommend.json"  # the tuned recommend baselines
ENCODER = MODELS / "encoder"
RETRIEVER = MODELS / "retriever"
RERANKER = MODELS / "reranker"
RECOMMENDER = MODELS / "recommender"  # the served recommender (sources, ranker, profiles)
DRIFT = DATA / "drift"
DRIFT_REFERENCE = DRIFT / "reference"  # tonight's training days: a promoted model's reference
EVALUATION = DATA / "evaluation"

# -- reports, metrics and learning curves (small; in DVC's cache like every output) ------
REPORTS = Path("reports")
VALIDATION_REPORT = REPORTS / "validation"  # summary.json + data_docs/
VALIDATION_SUMMARY = VALIDATION_REPORT / "summary.json"  # DVC-tracked; the pages are not
DATA_DOCS = VALIDATION_REPORT / "data_docs"  # stamped with the time they were built
DRIFT_REPORT = REPORTS / "drift.json"
DRIFT_PAGES = REPORTS / "drift"  # index.html + Evidently's pages (time-stamped: not in DVC)
DECISION = REPORTS / "decision.json"  # evaluate writes it; promote and Airflow read it
ONLINE_DECISION = REPORTS / "online.json"  # the online stage's reading of the experiment
METRICS = Path("metrics")
LIVE = Path("dvclive")

# -- scratch and state that DVC does not track -------------------------------------------
TINY_BERT = MODELS / "tiny-random-bert"  # built on first use by the `tiny` profile
CHECKPOINTS = Path(".checkpoints")  # removed once a training stage's output is written
STATE = Path(".shopflow")
TIMINGS = STATE / "timings"  # run-to-run timings of each stage: not hashed by DVC
RUN_LOG = STATE / "runs" / "stages.jsonl"
ALERTS = STATE / "alerts.jsonl"
CLUSTER = Path(".airflow-cluster")  # `make airflow-cluster`: its servers, clones, shared state

# -- development data (never in the default path) -----------------------------------------
SHARED_DATA = Path("../shared/data")


def metrics(name: str) -> Path:
    """`metrics/<name>.json`: a stage's numbers (`dvc metrics show`) or a benchmark's."""
    return METRICS / f"{name}.json"


def live(stage: str) -> Path:
    """`dvclive/<stage>`: a training stage's learning curves (`dvc plots show`)."""
    return LIVE / stage


def evaluation_of(model_dir: Path) -> Path:
    """Where a model stage keeps its per-query test scores (paired tests read them)."""
    return model_dir / "eval"


def timings(stage: str) -> Path:
    """A stage's timings of its last run (seconds, throughput, latencies); beside the metrics,
    never in them, so the same data and code give the same dvc.lock."""
    return TIMINGS / f"{stage}.json"
