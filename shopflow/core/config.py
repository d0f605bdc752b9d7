"""Typed view of params.yaml, the one place every knob and its effective value live.

params.yaml is composed by Hydra, the way DVC composes it for `dvc exp run -S`: conf/config.yaml
holds the default (2-core CPU) values, conf/profile/<name>.yaml a profile's overrides (`tiny`
for tests and CI, `gpu` for a GPU box), and `-S key=value` overrides come last and win. Every
stage reads params.yaml as it is, the same values DVC tracks; nothing is resolved a second time.

The models below carry each knob's type, bounds and meaning, but no default value: a value
written in two places drifts apart, and DVC can only track what is in params.yaml. A key
missing from params.yaml, a typo in a key (`extra="forbid"`) or a value out of bounds is an
error that names the key.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shopflow.core.errors import ConfigError
from shopflow.core.paths import CONF, PARAMS

SourceName = Literal[
    "synthetic", "judgments", "events", "esci", "wands", "online_retail", "service_logs"
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(Section):
    """The data window: `days` whole UTC days ending with `end` (inclusive)."""

    end: dt.date
    days: int = Field(ge=1, le=3660)

    @property
    def start(self) -> dt.date:
        return self.end - dt.timedelta(days=self.days - 1)

    def dates(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range(self.days)]

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """[start, end) as UTC datetimes: the half-open interval events must fall in."""
        start = dt.datetime.combine(self.start, dt.time(), tzinfo=dt.UTC)
        return start, start + dt.timedelta(days=self.days)


class IngestConfig(Section):
    source: SourceName
    path: str
    window: Window
    encoding: str
    mapping: dict[str, str] = Field(description="contract column -> source column")
    options: dict[str, Any] = Field(description="per source: relevance_scale, locale, ...")
    on_unparseable: Literal["fail", "quarantine"]
    max_quarantine_share: float = Field(ge=0, le=1)


class InjectedDrift(Section):
    """Injected drift from `start` on; every magnitude 0 means off."""

    start: dt.date | None
    new_category: float = Field(ge=0, le=1)
    seasonal_shift: float = Field(ge=0, le=1)
    price_change: float = Field(ge=-0.9, le=5)
    new_vocab: float = Field(ge=0, le=1)


class SyntheticConfig(Section):
    start_date: dt.date
    n_products: int = Field(ge=50, le=5_000_000)
    n_users: int = Field(ge=10)
    sessions_per_day: int = Field(ge=1)
    search_share: float = Field(ge=0, le=1)
    judged_queries_per_day: int = Field(ge=0)
    pii_query_rate: float = Field(ge=0, le=1)
    candidate_pool: int = Field(ge=10)
    drift: InjectedDrift


class ValidateConfig(Section):
    on_invalid: Literal["fail", "quarantine"]
    max_quarantine_share: float = Field(ge=0, le=1)
    max_unknown_product_share: float = Field(ge=0, le=1)
    volume_ratio_min: float = Field(gt=0)
    volume_ratio_max: float = Field(gt=0)
    volume_lookback_days: int = Field(ge=1)
    closed_weekdays: list[int] = Field(
        description="weekdays the shop is closed (0 = Monday): no volume check, no baseline"
    )
    closed_dates: list[dt.date] = Field(description="holidays the shop is closed")
    max_title_chars: int = Field(ge=1)
    max_query_chars: int = Field(ge=1)
    future_tolerance_minutes: int = Field(ge=0)


class PrepareConfig(Section):
    test_days: int = Field(ge=1)
    valid_days: int = Field(ge=0)
    judgments_test_share: float = Field(gt=0, lt=1)
    judgments_valid_share: float = Field(ge=0, lt=1)
    history_length: int = Field(ge=1)
    train_days: int | None = Field(
        ge=1,
        description="days before valid the models train on; earlier days of the window are "
        "history (customer profiles, buy again, the recommenders' counts). null: all",
    )

    @model_validator(mode="after")
    def _shares_leave_training_data(self) -> PrepareConfig:
        if self.judgments_test_share + self.judgments_valid_share >= 1:
            raise ValueError("judgments_test_share + judgments_valid_share must be < 1")
        return self


class ModelsConfig(Section):
    base: str
    allow_download: bool
    device: Literal["auto", "cpu", "cuda"]


class Bm25Config(Section):
    """The lexical baseline and first stage: BM25F over the product's fields (`models.lexical`),
    stemmed, with k1, b and the field weights tuned by the baselines stage."""

    stemmer: str | None = Field(description="Snowball language (PyStemmer); null: no stemming")
    k1: float = Field(gt=0, description="the tuning's start, and the value without tuning")
    b: float = Field(ge=0, le=1)
    weights: dict[Literal["title", "brand", "category", "attributes", "description"], float] = (
        Field(description="per field; 0 leaves a field out")
    )
    tune: bool = Field(description="choose k1, b and the weights on judged non-test queries")
    k1_grid: list[float] = Field(min_length=1)
    b_grid: list[float] = Field(min_length=1)
    weight_grid: list[float] = Field(min_length=1)
    max_tuning_queries: int = Field(ge=1, description="judged queries sampled for the tuning")

    @model_validator(mode="after")
    def _sane(self) -> Bm25Config:
        if any(w < 0 for w in [*self.weights.values(), *self.weight_grid]):
            raise ValueError("weights and weight_grid must be >= 0")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("weights: at least one field needs a weight above 0")
        if any(k <= 0 for k in self.k1_grid) or any(not 0 <= b <= 1 for b in self.b_grid):
            raise ValueError("k1_grid values must be > 0 and b_grid values in [0, 1]")
        return self


class PretrainConfig(Section):
    """Domain-adaptive masked-LM pretraining of the base encoder on the shop's own text."""

    enabled: bool
    max_seq_len: int = Field(ge=8, le=512)
    batch_size: int = Field(ge=1)
    steps: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_steps: int = Field(ge=0)
    mask_prob: float = Field(gt=0, lt=1)
    heldout_share: float = Field(gt=0, lt=0.5)
    max_heldout_lines: int = Field(ge=8)
    checkpoint_every: int = Field(ge=0)
    group_by_length: bool
    compile: bool
    whole_word_mask: bool = Field(
        False, description="mask every piece of a word together (no random replacement)"
    )
    trainer_args: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to transformers.TrainingArguments as they are (e.g. "
        "lr_scheduler_type, gradient_accumulation_steps, optim)",
    )


class TrainingConfig(Section):
    """Knobs every fine-tuning stage shares (its trainer's arguments, `training.hf_trainer`)."""

    steps: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_steps: int = Field(ge=0)
    checkpoint_every: int = Field(ge=0)
    compile: bool
    trainer_args: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to the stage's TrainingArguments as they are (e.g. "
        "lr_scheduler_type, gradient_accumulation_steps, batch_sampler)",
    )


class RetrieverConfig(TrainingConfig):
    """The bi-encoder: query tower (query + recent items) and item tower share one encoder."""

    batch_size: int = Field(ge=2, description="examples per step; in-batch negatives")
    temperature: float = Field(gt=0)
    max_query_len: int = Field(ge=8, le=512)
    max_item_len: int = Field(ge=8, le=512)
    history_items: int = Field(ge=0, description="recent item titles appended to a query")
    history_share: float = Field(ge=0, le=1, description="search examples given history")
    bm25_negative_depth: int = Field(30, ge=1)
    bm25_negative_skip: int = Field(
        0, ge=0, description="BM25 ranks never drawn as negatives (sparse judgments)"
    )
    max_examples_per_source: int = Field(ge=1)
    eval_batch_size: int = Field(ge=1)

    @model_validator(mode="after")
    def _skip_within_depth(self) -> RetrieverConfig:
        if self.bm25_negative_skip >= self.bm25_negative_depth:
            raise ValueError(
                f"bm25_negative_skip ({self.bm25_negative_skip}) must be below "
                f"bm25_negative_depth ({self.bm25_negative_depth}): no BM25 hit would be left"
            )
        return self


class RerankerConfig(TrainingConfig):
    """The cross-encoder: listwise on graded judgments, inverse-propensity-weighted on clicks."""

    steps: int = Field(ge=1)
    lr: float = Field(gt=0)
    head_lr: float = Field(gt=0, description="the head, pooler and prior weight (start untrained)")
    groups_per_step: int = Field(ge=1)
    group_size: int = Field(ge=2, description="products per query in one listwise group")
    click_share: float = Field(ge=0, le=1, description="groups drawn from the click log")
    max_len: int = Field(ge=16, le=512)
    max_query_len: int = Field(ge=4, le=128)
    max_position: int = Field(ge=2, description="deeper positions share one propensity")
    propensity_clip: float = Field(gt=0, le=1)
    candidates: int = Field(ge=1, description="retriever hits reranked at evaluation")
    eval_batch_size: int = Field(ge=1)
    serve: Literal["auto", "always", "never"] = Field(
        description="auto: served only when it beats the retriever alone on valid, in budget"
    )


class BoostingConfig(Section):
    """A LightGBM lambdarank ranker's knobs (the feature ranker, the recommendation mix)."""

    enabled: bool = Field(description="false: the ranker is not offered")
    trees: int = Field(ge=1, description="boosting rounds at most (early stopping)")
    learning_rate: float = Field(gt=0, le=1)
    leaves: int = Field(ge=2)
    min_data_in_leaf: int = Field(ge=1)
    early_stopping: int = Field(ge=1, description="rounds without a held-out NDCG@10 gain")
    stop_share: float = Field(
        gt=0, lt=1, description="training lists held out for early stopping (valid stays clean)"
    )


class RankerConfig(BoostingConfig):
    """The feature ranker (LightGBM lambdarank over search features), trained by the
    reranker stage."""

    candidates: int = Field(ge=1, description="first-stage hits it reorders")


RecommendSource = Literal["popularity", "buy_again", "ease", "item_knn", "user_tower"]


class RecommendConfig(Section):
    """Recommendations: what they leave out, the baselines' knobs (tuned on the valid
    split), and the mix of candidate sources a LightGBM ranker reorders (the recommender
    stage, `engine.recommend`)."""

    exclude: Literal["auto", "none", "purchased", "interacted"] = Field(
        description="what a list leaves out; auto: none when rebuy_share of the valid "
        "purchases re-buy, else purchased"
    )
    rebuy_share: float = Field(gt=0, le=1)
    sources: list[RecommendSource] = Field(min_length=1, description="the mix's candidates")
    popularity_half_life_days: list[float | None] = Field(min_length=1, description="grid")
    buy_again_half_life_days: list[float | None] = Field(min_length=1, description="grid")
    ease_l2: list[float] = Field(min_length=1, description="grid of EASE's λ")
    ease_max_items: int = Field(ge=2, description="most popular products EASE covers")
    knn_neighbours: list[int] = Field(min_length=1, description="grid")
    knn_shrink: float = Field(ge=0)
    item_neighbours: int = Field(ge=1, description="kept per product of EASE and kNN")
    candidates: int = Field(ge=1, description="each source's top products the ranker reads")
    folds: int = Field(ge=2, description="customer folds of the mix's cross-validation")
    ranker: BoostingConfig

    @model_validator(mode="after")
    def _positive_grids(self) -> RecommendConfig:
        halves = [*self.popularity_half_life_days, *self.buy_again_half_life_days]
        if any(h is not None and h <= 0 for h in halves):
            raise ValueError("half-lives must be > 0 (null: no decay)")
        if any(v <= 0 for v in [*self.ease_l2, *self.knn_neighbours]):
            raise ValueError("ease_l2 and knn_neighbours values must be > 0")
        return self


class EvaluationConfig(Section):
    relevant_at: float = Field(description="grade counted as relevant by MRR, recall, MAP")
    significance: float = Field(gt=0, lt=1)
    confidence: float = Field(gt=0, lt=1, description="level of every interval")
    resamples: int = Field(ge=100, description="bootstrap and permutation resamples")
    interleaving_sessions: int = Field(ge=0, description="simulated sessions; 0 = off")
    power: float = Field(gt=0, lt=1, description="of the A/B test sized for the CTR gap")
    latency_queries: int = Field(ge=1, description="single-query searches timed per system")
    head_min_count: int = Field(ge=1, description="a head query: seen this often in training")
    min_slice_queries: int = Field(ge=2, description="smaller slices are shown, not gated")


class GuardrailMargins(Section):
    """How much worse than the champion a challenger may be on each guardrail."""

    recall_at_100: float = Field(0.01, ge=0)
    recommend_hit_at_10: float = Field(0.005, ge=0)
    coverage: float = Field(ge=0, description="catalogue coverage@10, absolute")
    slice_ndcg_at_10: float = Field(0.02, ge=0, description="every slice with enough queries")
    brand_disparity: float = Field(ge=0, description="exposure vs relevance, per brand")
    latency: float = Field(ge=0, description="relative p95 increase over a model champion")
    max_p95_latency_ms: float = Field(2000, gt=0, description="absolute p95 budget per query")


class GateConfig(Section):
    """When a challenger replaces the champion (the evaluate stage's decision)."""

    primary: Literal["auto", "search_ndcg@10", "recommend_ndcg@10", "recommend_hit@10"]
    min_gain: float = Field(ge=0, description="smallest improvement worth a promotion")
    alpha: float = Field(gt=0, lt=1)
    require_interleaving: bool
    margins: GuardrailMargins


class PromoteConfig(Section):
    """Where the registry lives and how a promoted Bento is smoke-tested."""

    registry: str
    smoke_queries: int = Field(ge=1)
    smoke_p95_ms: float = Field(5000, gt=0)
    smoke_min_overlap: float = Field(ge=0, le=1, description="top-10 served vs evaluated")


class DriftThresholds(Section):
    """Effect sizes above which a feature has drifted. Effect sizes, not p-values: on a big
    shop every difference is significant, and a p-value test would fire every night."""

    numeric: float = Field(gt=0, description="Wasserstein distance / reference std")
    categorical: float = Field(gt=0, le=1, description="Jensen-Shannon distance")
    proportion: float = Field(gt=0, description="Cohen's h of a rate (CTR per position)")
    embedding: float = Field(gt=0.5, le=1, description="domain classifier ROC AUC")
    prediction: float = Field(
        gt=0, description="Wasserstein / std of the champion's score on sampled queries"
    )


class DriftAlerts(Section):
    """Changes too large or too broad to be the world changing: a broken data pipeline."""

    drift_share: float = Field(gt=0, le=1, description="share of features drifted at once")
    min_drifted: int = Field(
        ge=1,
        description="... and at least this many (a source with 4 features is not broken"
        " because 2 moved)",
    )
    ctr_drop: float = Field(gt=0, le=1, description="relative fall of the overall CTR")


class DriftCheckConfig(Section):
    """The drift stage: the champion's training window against the latest days."""

    current_days: int = Field(ge=1, description="the latest days checked (the current window)")
    min_rows: int = Field(ge=10, description="fewer current values: insufficient data")
    max_reference_rows: int = Field(ge=100, description="rows sampled per feature group")
    text_sample: int = Field(ge=50, description="queries embedded and scored per window")
    new_product_days: int = Field(ge=1, description="a product is new this long after launch")
    ctr_positions: int = Field(ge=1, description="CTR drift checked at positions 1..this")
    thresholds: DriftThresholds
    alerts: DriftAlerts
    cooldown_days: int = Field(ge=0, description="the same drift retrains once in this time")
    cooldown_growth: float = Field(
        ge=1, description="... unless a feature's score grew by this factor"
    )
    history: str = Field(description="decisions of past nights (cool-down)")


class ServingConfig(Section):
    """The BentoML service: limits of a request, the reranker's adaptive batching, the index."""

    max_k: int = Field(ge=1, le=1000)
    max_query_chars: int = Field(ge=1)
    max_rank_products: int = Field(ge=1, description="products one /rank call may send")
    max_recent_products: int = Field(ge=1)
    max_body_bytes: int = Field(ge=1024)
    max_json_depth: int = Field(
        16, ge=2, le=256, description="deeper request bodies get 400 before any parser recurses"
    )
    max_header_bytes: int = Field(
        65_536, ge=1024, description="a request line and headers over this get 431"
    )
    read_timeout_s: float = Field(
        10.0, gt=0, le=300, description="a request's headers, then its body, must arrive within"
    )
    adaptive_batching: bool
    max_batch_size: int = Field(ge=2, description="(query, product) pairs per batch")
    max_latency_ms: int = Field(ge=1, description="a request's wait + compute budget")
    max_p50_ms: float = Field(gt=0, description="the serving mix's single-query search p50")
    first_stage: Literal["auto", "dense", "hybrid"] = Field(
        "auto", description="auto: dense or hybrid (dense + BM25), chosen on the valid split"
    )
    rrf_k: float = Field(60.0, gt=0, description="reciprocal-rank fusion's k (hybrid)")
    ann_min_items: int = Field(ge=1, description="HNSW from this catalogue size on")
    batch_size: int = Field(ge=1, description="texts per forward pass")
    onnx: Literal["none", "fp32", "int8"]
    max_int8_ndcg_drop: float = Field(0.005, ge=0, description="int8 only offered below this")
    port: int = Field(ge=1, le=65535)


class DeployConfig(Section):
    """Where the deploy DAG puts a new champion's Bento."""

    target: Literal["local", "bentocloud"] = Field(
        description="local: `bentoml serve` on 127.0.0.1; bentocloud: `bentoml deploy`"
    )
    name: str = Field(min_length=1, description="the BentoCloud deployment's name")
    state: str = Field(description="the local service's pid, port and log")


class AirflowConfig(Section):
    """The nightly DAG's schedule and its operational knobs; no stage reads these, so changing
    one re-runs nothing."""

    schedule: str | None = Field(min_length=1, description="cron (UTC); null: triggered runs only")
    max_model_age_days: int = Field(ge=1, description="retrain at least this often")
    retries: int = Field(ge=0)
    retry_delay_minutes: float = Field(gt=0, description="doubled at each retry")
    max_retry_delay_minutes: float = Field(gt=0)
    timeout_minutes: dict[str, float] = Field(
        description="per stage; `default` for the rest",
    )
    gpu_pool: str
    gpu_queue: str = Field(description="the Celery queue GPU workers serve")
    gpu_stages: list[str]
    alert_connection: str = Field(description="HTTP webhook connection id")
    dvc_remote: str | None = Field(
        min_length=1,
        description="tasks pull their inputs from this DVC remote and push their outputs "
        "(workers with their own clones); null: every task in one project folder",
    )

    @model_validator(mode="after")
    def _has_default_timeout(self) -> AirflowConfig:
        if "default" not in self.timeout_minutes:
            raise ValueError("timeout_minutes needs a `default` entry")
        if any(v <= 0 for v in self.timeout_minutes.values()):
            raise ValueError("timeout_minutes values must be positive")
        return self

    def timeout(self, stage: str) -> float:
        return self.timeout_minutes.get(stage, self.timeout_minutes["default"])


class ReportConfig(Section):
    """The run report (`shopflow report`): one page per run and an index of all runs."""

    folder: str = Field(description="one sub-folder per run, index.html on top")
    keep_linked_reports: int | None = Field(
        ge=1, description="newest runs keeping copies of Data Docs and Evidently (null: all)"
    )


class OnlineLogConfig(Section):
    """Where the service logs its impressions and the shop's events, and how much it buffers."""

    sink: Literal["files", "postgres", "off"] = Field(
        description="files: rotating JSON lines by day and hour; postgres: tables in $dsn_env"
    )
    folder: str = Field(description="the files sink's root ($SHOPFLOW_LOG_DIR overrides it)")
    rotate_mb: float = Field(gt=0, description="a file part is closed at this size")
    dsn_env: str = Field(description="the environment variable holding the Postgres DSN")
    queue_size: int = Field(ge=10, description="records buffered in memory; beyond: counted loss")
    batch_size: int = Field(ge=1, description="records written per sink call")
    flush_interval_s: float = Field(gt=0, le=60, description="a partial batch waits this long")
    retries: int = Field(ge=0, le=10, description="sink attempts per batch before it is lost")


class OnlineDecisionConfig(Section):
    """The nightly online decision: an always-valid test on the interleaving preference and
    the guardrails a challenger must keep."""

    alpha: float = Field(
        gt=0, lt=0.5, description="false promotions (and stops), however often read"
    )
    tau: float = Field(gt=0, description="mSPRT mixing scale: the effect sizes it is tuned for")
    min_units: int = Field(ge=1, description="no decision before this many units")
    max_days: int = Field(ge=1, description="an experiment still undecided after this stops")
    max_p95_ratio: float = Field(gt=1, description="challenger p95 latency / champion's")
    max_error_rate: float = Field(
        ge=0, le=1, description="share of the challenger's answers that failed"
    )
    max_zero_result_increase: float = Field(ge=0, le=1)
    min_cart_ratio: float = Field(
        gt=0, le=1, description="challenger add-to-cart per impression / champion's (A/B only)"
    )
    srm_p: float = Field(gt=0, lt=1, description="sample-ratio mismatch below this p stops")


class OnlineConfig(Section):
    """Online experiments: impression logging, traffic split and the nightly decision."""

    after_gate: Literal["direct", "shadow", "interleave"] = Field(
        description="direct: a gate pass promotes at once; else an online experiment starts"
    )
    share: float = Field(gt=0, le=1, description="share of units in an experiment")
    log: OnlineLogConfig
    exploration_rate: float = Field(
        ge=0, le=0.5, description="impressions whose top result is swapped with a lower one"
    )
    attribution_minutes: float = Field(gt=0, description="events after this are not attributed")
    max_events: int = Field(ge=1, le=10_000, description="events one POST /events may carry")
    decision: OnlineDecisionConfig


class DpConfig(Section):
    """User-level differentially private fine-tuning of the retriever (docs/privacy.md):
    DP-SGD with the customer, not the event, as the unit that is sampled and clipped."""

    enabled: bool = Field(description="train the retriever with user-level DP-SGD")
    epsilon: float = Field(gt=0, description="the budget ε one training run may spend")
    delta: float | None = Field(
        gt=0, lt=1, description="δ; null: 1 / (10 × the customers in the training data)"
    )
    max_grad_norm: float = Field(gt=0, description="each customer's gradient is clipped to this")
    users_per_step: int = Field(ge=1, description="customers sampled per step (Poisson, expected)")
    max_examples_per_user: int = Field(ge=1, description="a sampled customer's examples per step")
    public_negatives: int = Field(
        ge=1, description="random catalogue products each customer's queries are scored against"
    )
    trained_layers: int | None = Field(
        ge=1,
        description="transformer layers trained privately, from the top (the token embeddings "
        "and the layers below stay as pretrain-adapt left them); null: every layer",
    )
    accountant: Literal["prv", "rdp"] = Field(description="Opacus's privacy accountant")
    audit_share: float = Field(
        ge=0, lt=0.5, description="customers held out of training for the membership check"
    )


class PrivacyConfig(Section):
    """What training may learn about one customer."""

    dp: DpConfig


class Params(Section):
    """The effective configuration of one run."""

    profile: str
    seed: int
    ingest: IngestConfig
    synthetic: SyntheticConfig
    validate_: ValidateConfig = Field(alias="validate")
    prepare: PrepareConfig
    models: ModelsConfig
    bm25: Bm25Config
    pretrain: PretrainConfig
    retriever: RetrieverConfig
    reranker: RerankerConfig
    ranker: RankerConfig
    recommend: RecommendConfig
    evaluation: EvaluationConfig
    serving: ServingConfig
    gate: GateConfig
    promote: PromoteConfig
    drift: DriftCheckConfig
    deploy: DeployConfig
    airflow: AirflowConfig
    report: ReportConfig
    online: OnlineConfig
    privacy: PrivacyConfig

    @model_validator(mode="after")
    def _private_models_only(self) -> Params:
        if self.privacy.dp.enabled and self.reranker.click_share > 0:
            raise ValueError(
                "privacy.dp.enabled: the cross-encoder (reranker) has no DP training and learns "
                f"from customers' clicks (reranker.click_share {self.reranker.click_share}): "
                "set reranker.click_share=0 (graded judgments only: no customer data)"
            )
        return self


def flatten(tree: object, prefix: str = "") -> list[tuple[str, object]]:
    """`{"a": {"b": 1}}` → `[("a.b", 1)]`: nested settings as dotted keys."""
    if isinstance(tree, dict):
        return [item for k, v in tree.items() for item in flatten(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), tree)]


def compose(conf: str | Path = CONF, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """params.yaml's text as `dvc exp run -S ...` writes it with DVC's Hydra composition on:
    conf/config.yaml, then the chosen profile, then each override, the last one winning.

    The same public Hydra and OmegaConf calls DVC makes, so that a params.yaml written here
    and one written by `dvc exp run` with the same overrides are the same bytes.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    folder = Path(conf).resolve()
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"{conf}/config.yaml: not found (run from the project root)")
    try:
        with initialize_config_dir(str(folder), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        given = " ".join(f"-S {o}" for o in overrides) or "(no overrides)"
        why = str(exc).split("\nConfig search path")[0].strip()  # Hydra's internals, not news
        raise ConfigError(f"{conf}: cannot compose params with {given}: {why}") from None
    return OmegaConf.to_yaml(cfg)


def write_params(
    params_path: str | Path = PARAMS, overrides: list[str] | tuple[str, ...] = ()
) -> Path:
    """Compose `conf/` beside `params_path` with `overrides` and write the result there
    (atomically), as `dvc exp run -S` would; then `dvc repro` runs with those values."""
    target = Path(params_path)
    text = compose(target.with_name(CONF.name), overrides)
    _validate(yaml.safe_load(text), f"{CONF}/ with {list(overrides)}")
    _replace(target, text)
    return target


def set_params(params_path: str | Path, values: dict[str, Any]) -> bool:
    """Set dotted keys (`{"ingest.window.end": "2026-10-28"}`) in params.yaml itself, keeping
    every other value; True when the file changed. params.yaml holds the effective values, so
    the value written here is the value every stage reads (the night's window, a cluster's
    shared locations)."""
    from omegaconf import OmegaConf

    target = Path(params_path)
    tree = _read_yaml(target)
    updated = copy.deepcopy(tree)
    for key, value in values.items():
        node: Any = updated
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise ConfigError(f"{target}: cannot set {key!r}: {part!r} is not a section")
        if leaf not in node:
            raise ConfigError(f"{target}: cannot set {key!r}: no such key")
        node[leaf] = value
    _validate(updated, str(target))
    if updated == tree:
        return False
    _replace(target, OmegaConf.to_yaml(OmegaConf.create(updated)))
    return True


def _replace(target: Path, text: str) -> None:
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the project root)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(tree).__name__}")
    return tree


def _validate(tree: dict[str, Any], where: str) -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{where}: invalid params: {problems}") from None


def load_params(path: str | Path = PARAMS, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """The params a stage runs with: params.yaml as it is, or, with `-S` overrides, `conf/`
    beside it composed with them exactly as `dvc exp run -S` composes (so one flag has one
    meaning). Errors name the file and the offending key."""
    path = Path(path)
    if overrides:
        text = compose(path.with_name(CONF.name), overrides)
        return _validate(yaml.safe_load(text), f"{CONF}/ with {list(overrides)}")
    return _validate(_read_yaml(path), str(path))
