//! Configuration: built-in defaults, then an optional TOML file (`COURIER_CONFIG`),
//! then environment variables `COURIER__SECTION__KEY`. Defaults point at the
//! local Postgres, RabbitMQ and Redis so a development machine needs nothing set.

use std::fmt;

use serde::Deserialize;

/// A value that must never appear in logs or `Debug` output (passwords, keys, URLs with credentials).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is handed to the system that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub api: ApiSettings,
    pub relay: RelaySettings,
    pub worker: WorkerSettings,
    pub rcon: RconSettings,
    pub retry: RetrySettings,
    pub rescuer: RescuerSettings,
    pub discord: DiscordSettings,
    pub payments: PaymentSettings,
    pub orders: OrderSettings,
    pub webhooks: WebhookSettings,
    pub email: EmailSettings,
    pub alerts: AlertSettings,
    pub downloads: DownloadSettings,
    pub console: ConsoleSettings,
    /// Supplier APIs by name (the name used in `supplier_key` actions).
    #[serde(default)]
    pub suppliers: std::collections::BTreeMap<String, SupplierSettings>,
    #[serde(default)]
    pub keys: KeySettings,
    #[serde(default)]
    pub tls: TlsSettings,
    pub log: LogSettings,
}

/// The admin console under `/admin`.
#[derive(Clone, Debug, Deserialize)]
pub struct ConsoleSettings {
    /// A sign-in lasts this long (1 to 720 hours).
    pub session_hours: u32,
    /// Always mark the session cookie `Secure` (it is, anyway, when a proxy
    /// says the request came over TLS with `X-Forwarded-Proto: https`).
    pub secure_cookies: bool,
}

/// Digital downloads: the links customers get, and where the files are kept.
#[derive(Clone, Debug, Deserialize)]
pub struct DownloadSettings {
    /// The key download links are signed with (HMAC-SHA256), at least 32
    /// characters; the API and the workers must share it. Without it,
    /// `download` actions cannot be saved and links are not served.
    pub signing_key: Option<Secret>,
    /// Where customers reach this API, for the links in e-mails
    /// (`https://shop.example.com`; the link is `<this>/downloads/<token>`).
    pub public_base_url: String,
    /// A link works this long after it is made (an action may say otherwise).
    pub link_ttl_hours: u32,
    /// Full downloads per link (an action may say otherwise). Resumed
    /// (`Range`) requests spend only the bytes they fetch.
    pub max_downloads: u32,
    /// The largest file an upload may store.
    pub max_file_bytes: u64,
    /// `local` (a directory, the default) or `s3` (any S3-compatible store).
    pub storage: String,
    /// The directory of `local` storage; created when missing.
    pub local_dir: String,
    pub s3_bucket: Option<String>,
    pub s3_region: Option<String>,
    /// An S3-compatible endpoint other than AWS (MinIO, R2, …).
    pub s3_endpoint: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<Secret>,
    /// Allow `http://` endpoints (a local MinIO).
    pub s3_allow_http: bool,
}

impl DownloadSettings {
    /// The link signer, when `signing_key` is set.
    pub fn signer(&self) -> Option<crate::domain::download::LinkSigner> {
        self.signing_key
            .as_ref()
            .filter(|k| !k.expose().is_empty())
            .map(|k| {
                crate::domain::download::LinkSigner::new(
                    k.expose().as_bytes(),
                    &self.public_base_url,
                )
            })
    }
}

/// Where admin alerts are sent.
#[derive(Clone, Debug, Deserialize)]
pub struct AlertSettings {
    /// Addresses, comma-separated, e-mailed through `email.*` (which must be on).
    pub email_to: Option<String>,
    /// A Discord incoming webhook (`https://discord.com/api/webhooks/…`).
    pub discord_webhook_url: Option<Secret>,
    /// A Slack incoming webhook (`https://hooks.slack.com/services/…`).
    pub slack_webhook_url: Option<Secret>,
    /// The same condition is not sent again within this many minutes.
    pub cooldown_minutes: u32,
    /// Alert when this many dead letters are open (0: never).
    pub dead_letters_threshold: u32,
    pub timeout_ms: u64,
}

impl AlertSettings {
    /// The configured channels, as the alert deliveries name them.
    pub fn channels(&self, email_on: bool) -> Vec<&'static str> {
        let mut out = Vec::new();
        if email_on
            && self
                .email_to
                .as_deref()
                .is_some_and(|t| !t.trim().is_empty())
        {
            out.push("email");
        }
        if self.discord_webhook_url.is_some() {
            out.push("discord");
        }
        if self.slack_webhook_url.is_some() {
            out.push("slack");
        }
        out
    }
}

/// Customer e-mail over SMTP.
#[derive(Clone, Debug, Deserialize)]
pub struct EmailSettings {
    /// Off (the default): no e-mail is written or sent.
    pub enabled: bool,
    pub smtp_host: String,
    pub smtp_port: u16,
    /// `starttls` (the default: port 587), `tls` (implicit TLS: port 465), or
    /// `none` (plain text: a local relay or a test server only).
    pub smtp_security: String,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<Secret>,
    /// `Store Name <shop@example.com>`.
    pub from: String,
    pub reply_to: Option<String>,
    /// A directory with `<template>.subject`, `.txt` and `.html` files that
    /// replace the built-in ones (any of them).
    pub templates_dir: Option<String>,
    /// The store's name, for the templates.
    pub store_name: String,
    /// Connect to the end of the SMTP conversation.
    pub timeout_ms: u64,
    /// The order confirmation, when an order is paid.
    pub send_confirmation: bool,
    /// The refund confirmation, when a refund's money moved.
    pub send_refund: bool,
    /// CD keys e-mailed when they are obtained; the item is `fulfilled` until
    /// the SMTP server accepts the e-mail, then `delivered`.
    pub send_keys: bool,
    /// Download links e-mailed when they are made; the item is `fulfilled`
    /// until the SMTP server accepts the e-mail, then `delivered`.
    pub send_downloads: bool,
}

/// Outbound webhooks to the store's endpoints.
#[derive(Clone, Debug, Deserialize)]
pub struct WebhookSettings {
    /// Off (the default): endpoint URLs that resolve to loopback, private,
    /// link-local (cloud metadata), shared or unspecified addresses are
    /// refused when saved and when called.
    pub allow_private_targets: bool,
    /// One call, connect to last byte of the answer.
    pub timeout_ms: u64,
    /// Calls in flight to one endpoint, across every worker.
    pub concurrency_per_endpoint: u32,
    /// Calls per second to one endpoint, across every worker (0: no limit).
    pub per_second_per_endpoint: u32,
    /// An endpoint that has failed without one success for this long is
    /// disabled, with an alert.
    pub disable_after_hours: u32,
    /// How long the old secret still signs after a rotation, unless the
    /// rotation names its own overlap.
    pub secret_overlap_hours: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DiscordSettings {
    /// The bot's token; Discord deliveries fail permanently without it.
    pub bot_token: Option<Secret>,
    /// `https://discord.com`; tests point it at a fake.
    pub api_base: String,
    /// Requests per second for the bot across all replicas (Discord allows 50).
    pub global_per_second: u32,
    pub timeout_ms: u64,
}

/// Payment gateways: webhook secrets, the Stripe API for refunds, disputes.
#[derive(Clone, Debug, Deserialize)]
pub struct PaymentSettings {
    /// The Stripe endpoint's signing secret (`whsec_…`); `/webhooks/stripe`
    /// answers 503 until it is set, so Stripe keeps re-sending.
    pub stripe_webhook_secret: Option<Secret>,
    /// The previous secret while rotating: a signature by either is accepted.
    pub stripe_webhook_secret_previous: Option<Secret>,
    /// Oldest (or furthest in the future) a signed timestamp may be.
    pub webhook_tolerance_seconds: u64,
    /// Stripe's API, for refunds; tests point it at a fake.
    pub stripe_api_base: String,
    /// The secret API key (`sk_…`) refunds are made with.
    pub stripe_secret_key: Option<Secret>,
    pub stripe_timeout_ms: u64,
    /// The Standard Webhooks secret (`whsec_` + base64) of `/webhooks/generic`.
    pub generic_webhook_secret: Option<Secret>,
    pub generic_webhook_secret_previous: Option<Secret>,
    /// Withdraw access when a dispute opens (else only when it is lost).
    pub revoke_on_dispute: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SupplierSettings {
    pub base_url: String,
    pub api_key: Secret,
    /// Across all replicas.
    #[serde(default = "default_supplier_rate")]
    pub requests_per_second: u32,
    #[serde(default = "default_supplier_timeout")]
    pub timeout_ms: u64,
}

fn default_supplier_rate() -> u32 {
    5
}

fn default_supplier_timeout() -> u64 {
    10_000
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct KeySettings {
    /// Base64 of 32 random bytes: AES-256-GCM key for CD keys at rest. Keys
    /// cannot be stored (so key deliveries fail) until it is set.
    pub encryption_key: Option<Secret>,
}

/// TLS to RabbitMQ (`amqps://`) and Redis (`rediss://`) uses Mozilla's roots
/// and the CA bundle named here: for Redis the bundle replaces the roots, for
/// RabbitMQ it is added to them (lapin's connector). Postgres takes its CA from
/// `database.url` (`sslmode=verify-full&sslrootcert=/path`), as libpq does.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TlsSettings {
    /// A PEM file of CA certificates to trust instead of the built-in roots.
    pub ca_file: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    /// Run pending migrations when `courier-api serve` starts.
    pub migrate_on_start: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AmqpSettings {
    pub url: Secret,
    /// Prepended to every queue name, so several Courier installations (or tests) share a broker.
    pub prefix: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RedisSettings {
    pub url: Secret,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ApiSettings {
    pub bind: String,
    /// An admin API key registered at start-up (stored hashed), for a first login.
    pub bootstrap_admin_key: Option<Secret>,
    pub body_limit_bytes: usize,
    /// Most deliveries one order may plan (a key product plans one per unit).
    pub max_deliveries_per_order: usize,
    /// How long an API process trusts an API key it looked up (0: every
    /// request reads `api_keys`). A key revoked in the database stops working
    /// on a running process within this time.
    pub key_cache_seconds: u64,
    /// Order exports running at once per API process (each holds a
    /// database connection while it reads).
    pub max_exports: usize,
}

/// Longest process delay, store-wide or per product (30 days).
pub const MAX_PROCESS_DELAY_SECS: u32 = 2_592_000;

/// How paid orders start, store-wide; a product's own `auto_process` and
/// `process_delay_secs` override these for its orders.
#[derive(Clone, Debug, Deserialize)]
pub struct OrderSettings {
    /// Off: paid orders wait in `pending` until an admin processes them.
    pub auto_process: bool,
    /// Paid orders start this long after payment (0: at once).
    pub process_delay_secs: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RelaySettings {
    /// How often the relay looks for unpublished rows even when nothing woke it.
    pub sweep_interval_ms: u64,
    pub batch_size: i64,
    /// Published outbox rows are kept this long for inspection, then deleted.
    pub retention_hours: u32,
    /// The API publishes the job messages of the orders it accepts itself,
    /// right after their commit, instead of leaving them to a sweep.
    pub publish_directly: bool,
    /// How long the relay gathers the rows it published directly before
    /// marking them sent in one statement (nothing waits for the mark; it
    /// must land inside their lease: at most `outbox::MARK_LINGER_MOST`).
    pub mark_linger_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct WorkerSettings {
    /// Jobs run at once per kind by one worker process; the consumer's
    /// prefetch is twice this.
    pub concurrency: u16,
    /// How long a claimed delivery stays leased to its worker.
    pub lease_seconds: u32,
    /// Name recorded on attempts; defaults to hostname-pid.
    pub id: Option<String>,
    /// Address of the worker's own listener: `/healthz`, `/readyz`, `/metrics`.
    pub http_bind: String,
    /// On SIGTERM, how long in-flight jobs may take before the worker exits
    /// anyway (their messages return to the queue; their leases to the rescuer).
    pub shutdown_grace_seconds: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RconSettings {
    pub connect_timeout_ms: u64,
    pub command_timeout_ms: u64,
    /// Cap on one response (all its packets together).
    pub max_response_bytes: usize,
    /// Pooled connections unused for longer than this are closed.
    pub idle_timeout_ms: u64,
    /// How long a command may wait for a free connection slot of its game
    /// server (across the workers) before it is re-queued — without
    /// spending an attempt.
    pub slot_wait_ms: u64,
}

impl RconSettings {
    /// The client's timeouts and caps, as every RCON connection uses them.
    pub fn timeouts(&self) -> crate::rcon::Timeouts {
        use std::time::Duration;
        crate::rcon::Timeouts {
            connect: Duration::from_millis(self.connect_timeout_ms),
            command: Duration::from_millis(self.command_timeout_ms),
            max_response_bytes: self.max_response_bytes,
            slot_wait: Duration::from_millis(self.slot_wait_ms),
        }
    }
}

/// Retry schedules per delivery kind, and the re-check schedule of waiting deliveries.
#[derive(Clone, Debug, Deserialize)]
pub struct RetrySettings {
    pub rcon: Schedule,
    pub discord: Schedule,
    pub supplier: Schedule,
    /// Gateway refunds.
    pub payment: Schedule,
    /// Outbound webhooks.
    pub webhook: Schedule,
    /// Customer e-mail.
    pub email: Schedule,
    /// Admin alerts to their channels.
    pub alert: Schedule,
    /// Making download links (only the database can fail).
    pub download: Schedule,
    pub waiting: WaitingSchedule,
}

impl RetrySettings {
    /// The retry schedule of a delivery kind.
    pub fn schedule(&self, kind: crate::domain::delivery::DeliveryKind) -> &Schedule {
        use crate::domain::delivery::DeliveryKind;
        match kind {
            DeliveryKind::Rcon => &self.rcon,
            DeliveryKind::DiscordRole => &self.discord,
            DeliveryKind::SupplierKey => &self.supplier,
            DeliveryKind::GatewayRefund => &self.payment,
            DeliveryKind::Webhook => &self.webhook,
            DeliveryKind::Email => &self.email,
            DeliveryKind::Alert => &self.alert,
            DeliveryKind::Download => &self.download,
        }
    }
}

/// Exponential backoff: attempt n (after n failures) waits
/// `min(base × 2^(n-1), max)`, scaled by a random factor in [0.8, 1.0].
#[derive(Clone, Debug, Deserialize)]
pub struct Schedule {
    /// Failed attempts before the delivery is dead.
    pub max_attempts: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct WaitingSchedule {
    /// How often a waiting delivery (player offline, out of stock) is re-checked.
    pub interval_ms: u64,
    /// After waiting this long the delivery is dead.
    pub max_wait_hours: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RescuerSettings {
    /// How often each worker looks for expired leases and overdue deliveries.
    pub interval_ms: u64,
    /// A queued/retrying/waiting delivery this far past its due time is re-published
    /// (its message was lost); duplicates are harmless.
    pub overdue_after_secs: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LogSettings {
    /// `pretty` or `json`.
    pub format: String,
    /// A `tracing` filter such as `info,courier_worker=debug`.
    pub filter: String,
}

/// Every key with its default; README's configuration table is this list.
pub const DEFAULTS: &[(&str, &str)] = &[
    (
        "database.url",
        "postgres://courier:courier@127.0.0.1:5432/courier",
    ),
    ("database.max_connections", "16"),
    ("database.migrate_on_start", "true"),
    ("amqp.url", "amqp://guest:guest@127.0.0.1:5672/%2f"),
    ("amqp.prefix", ""),
    ("redis.url", "redis://127.0.0.1:6379/"),
    ("api.bind", "127.0.0.1:8080"),
    ("api.body_limit_bytes", "262144"),
    ("api.max_deliveries_per_order", "1000"),
    ("api.key_cache_seconds", "10"),
    ("api.max_exports", "2"),
    ("orders.auto_process", "true"),
    ("orders.process_delay_secs", "0"),
    ("relay.sweep_interval_ms", "1000"),
    ("relay.batch_size", "200"),
    ("relay.retention_hours", "24"),
    ("relay.publish_directly", "true"),
    ("relay.mark_linger_ms", "20"),
    ("worker.concurrency", "16"),
    ("worker.lease_seconds", "60"),
    ("worker.shutdown_grace_seconds", "30"),
    ("worker.http_bind", "127.0.0.1:9091"),
    ("retry.rcon.max_attempts", "10"),
    ("retry.rcon.base_delay_ms", "5000"),
    ("retry.rcon.max_delay_ms", "3600000"),
    ("retry.discord.max_attempts", "10"),
    ("retry.discord.base_delay_ms", "5000"),
    ("retry.discord.max_delay_ms", "3600000"),
    ("retry.supplier.max_attempts", "10"),
    ("retry.supplier.base_delay_ms", "5000"),
    ("retry.supplier.max_delay_ms", "3600000"),
    ("retry.payment.max_attempts", "10"),
    ("retry.payment.base_delay_ms", "5000"),
    ("retry.payment.max_delay_ms", "3600000"),
    // 5 s doubling to an hour, 16 attempts: about 7.5 hours in all.
    ("retry.webhook.max_attempts", "16"),
    ("retry.webhook.base_delay_ms", "5000"),
    ("retry.webhook.max_delay_ms", "3600000"),
    // 10 s doubling to an hour, 12 attempts: an SMTP outage of about 5 hours.
    ("retry.email.max_attempts", "12"),
    ("retry.email.base_delay_ms", "10000"),
    ("retry.email.max_delay_ms", "3600000"),
    ("retry.alert.max_attempts", "12"),
    ("retry.alert.base_delay_ms", "10000"),
    ("retry.alert.max_delay_ms", "3600000"),
    ("retry.download.max_attempts", "8"),
    ("retry.download.base_delay_ms", "2000"),
    ("retry.download.max_delay_ms", "300000"),
    ("retry.waiting.interval_ms", "300000"),
    ("retry.waiting.max_wait_hours", "168"),
    ("rescuer.interval_ms", "10000"),
    ("rescuer.overdue_after_secs", "600"),
    ("rcon.connect_timeout_ms", "3000"),
    ("rcon.command_timeout_ms", "10000"),
    ("rcon.max_response_bytes", "1048576"),
    ("rcon.idle_timeout_ms", "30000"),
    ("rcon.slot_wait_ms", "15000"),
    ("discord.api_base", "https://discord.com"),
    ("discord.global_per_second", "50"),
    ("discord.timeout_ms", "10000"),
    ("payments.webhook_tolerance_seconds", "300"),
    ("payments.stripe_api_base", "https://api.stripe.com"),
    ("payments.stripe_timeout_ms", "10000"),
    ("payments.revoke_on_dispute", "true"),
    ("webhooks.allow_private_targets", "false"),
    ("webhooks.timeout_ms", "10000"),
    ("webhooks.concurrency_per_endpoint", "4"),
    ("webhooks.per_second_per_endpoint", "20"),
    ("webhooks.disable_after_hours", "120"),
    ("webhooks.secret_overlap_hours", "24"),
    ("email.enabled", "false"),
    ("email.smtp_host", "localhost"),
    ("email.smtp_port", "587"),
    ("email.smtp_security", "starttls"),
    ("email.from", "Store <shop@example.com>"),
    ("email.store_name", "Store"),
    ("email.timeout_ms", "15000"),
    ("email.send_confirmation", "true"),
    ("email.send_refund", "true"),
    ("email.send_keys", "true"),
    ("email.send_downloads", "true"),
    ("console.session_hours", "12"),
    ("console.secure_cookies", "false"),
    ("downloads.public_base_url", "http://127.0.0.1:8080"),
    ("downloads.link_ttl_hours", "168"),
    ("downloads.max_downloads", "5"),
    ("downloads.max_file_bytes", "2147483648"),
    ("downloads.storage", "local"),
    ("downloads.local_dir", "data/files"),
    ("downloads.s3_allow_http", "false"),
    ("alerts.cooldown_minutes", "60"),
    ("alerts.dead_letters_threshold", "10"),
    ("alerts.timeout_ms", "10000"),
    ("log.format", "pretty"),
    ("log.filter", "info,sqlx=warn"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Settings {
    /// A call's timeout within a worker's lease: at most half of it, so the
    /// attempt is recorded before the lease runs out.
    pub fn within_lease(&self, timeout_ms: u64) -> u64 {
        timeout_ms.min(u64::from(self.worker.lease_seconds) * 500)
    }

    /// Session settings every Postgres connection of this process carries:
    /// the e-mail switches, which the triggers that write customer e-mails
    /// read (`current_setting('courier.email_confirmation')`).
    pub fn session(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        let channels = self.alerts.channels(self.email.enabled);
        if !channels.is_empty() {
            out.push(("courier.alert_channels", channels.join(",")));
        }
        out.push((
            "courier.alert_cooldown_secs",
            (u64::from(self.alerts.cooldown_minutes) * 60).to_string(),
        ));
        out.push((
            "courier.alert_dead_letters",
            self.alerts.dead_letters_threshold.to_string(),
        ));
        if self.email.enabled && self.email.send_confirmation {
            out.push(("courier.email_confirmation", "on".into()));
        }
        if self.email.enabled && self.email.send_refund {
            out.push(("courier.email_refund", "on".into()));
        }
        if self.email.enabled && self.email.send_keys {
            out.push(("courier.email_keys", "on".into()));
        }
        if self.email.enabled && self.email.send_downloads {
            out.push(("courier.email_downloads", "on".into()));
        }
        out
    }

    /// Defaults, then the file named by `COURIER_CONFIG` (if set), then `COURIER__*` variables.
    pub fn load() -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        for (key, value) in DEFAULTS {
            builder = builder.set_default(*key, *value)?;
        }
        if let Ok(path) = std::env::var("COURIER_CONFIG") {
            builder = builder.add_source(config::File::with_name(&path).required(true));
        }
        let settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("COURIER")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(false),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what deserialisation cannot, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        if !self
            .amqp
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(invalid(
                "amqp.prefix",
                "use letters, digits, '.', '-' or '_'",
            ));
        }
        if self.worker.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1"));
        }
        let linger_most = crate::db::outbox::MARK_LINGER_MOST;
        if std::time::Duration::from_millis(self.relay.mark_linger_ms) > linger_most {
            return Err(invalid(
                "relay.mark_linger_ms",
                &format!(
                    "must be at most {} (inside the {} s lease of a row published directly)",
                    linger_most.as_millis(),
                    crate::db::outbox::DIRECT_LEASE.as_secs()
                ),
            ));
        }
        if self.orders.process_delay_secs > MAX_PROCESS_DELAY_SECS {
            return Err(invalid(
                "orders.process_delay_secs",
                "must be at most 2592000 (30 days)",
            ));
        }
        if !(1..=100_000).contains(&self.api.max_deliveries_per_order) {
            return Err(invalid(
                "api.max_deliveries_per_order",
                "must be between 1 and 100000",
            ));
        }
        if !matches!(
            self.email.smtp_security.as_str(),
            "starttls" | "tls" | "none"
        ) {
            return Err(invalid("email.smtp_security", "use starttls, tls or none"));
        }
        if self.email.enabled
            && (!self.email.from.contains('@') || self.email.from.contains(['\r', '\n']))
        {
            return Err(invalid(
                "email.from",
                "must be an address such as `Store <shop@example.com>`",
            ));
        }
        if self.email.timeout_ms == 0 {
            return Err(invalid("email.timeout_ms", "must be above 0"));
        }
        if !(1..=720).contains(&self.console.session_hours) {
            return Err(invalid(
                "console.session_hours",
                "must be between 1 and 720",
            ));
        }
        let d = &self.downloads;
        if d.signing_key
            .as_ref()
            .is_some_and(|k| !k.expose().is_empty() && k.expose().len() < 32)
        {
            return Err(invalid(
                "downloads.signing_key",
                "must be at least 32 characters (e.g. `openssl rand -base64 32`)",
            ));
        }
        if !(1..=87_600).contains(&d.link_ttl_hours) {
            return Err(invalid(
                "downloads.link_ttl_hours",
                "must be between 1 and 87600 (10 years)",
            ));
        }
        if !(1..=10_000).contains(&d.max_downloads) {
            return Err(invalid(
                "downloads.max_downloads",
                "must be between 1 and 10000",
            ));
        }
        if d.max_file_bytes == 0 {
            return Err(invalid("downloads.max_file_bytes", "must be above 0"));
        }
        match d.storage.as_str() {
            "local" if d.local_dir.trim().is_empty() => {
                return Err(invalid("downloads.local_dir", "must name a directory"));
            }
            "local" => {}
            "s3" if d.s3_bucket.as_deref().is_none_or(|b| b.trim().is_empty()) => {
                return Err(invalid(
                    "downloads.s3_bucket",
                    "is required with downloads.storage = s3",
                ));
            }
            "s3" => {}
            _ => return Err(invalid("downloads.storage", "use local or s3")),
        }
        if url::Url::parse(&d.public_base_url)
            .map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
        {
            return Err(invalid(
                "downloads.public_base_url",
                "must be an http(s) URL such as https://shop.example.com",
            ));
        }
        if self.webhooks.concurrency_per_endpoint == 0 {
            return Err(invalid(
                "webhooks.concurrency_per_endpoint",
                "must be at least 1",
            ));
        }
        if self.webhooks.timeout_ms == 0 {
            return Err(invalid("webhooks.timeout_ms", "must be above 0"));
        }
        if self.worker.lease_seconds < 5 {
            return Err(invalid("worker.lease_seconds", "must be at least 5"));
        }
        if u64::from(self.worker.lease_seconds) * 1000
            <= self.rcon.slot_wait_ms
                + 2 * self.rcon.connect_timeout_ms
                + self.rcon.command_timeout_ms
        {
            return Err(invalid(
                "worker.lease_seconds",
                "must be longer than rcon.slot_wait_ms + 2 × rcon.connect_timeout_ms + rcon.command_timeout_ms (waiting for a slot, connecting, running), or a slow command would lose its lease",
            ));
        }
        for (key, schedule) in [
            ("retry.rcon", &self.retry.rcon),
            ("retry.discord", &self.retry.discord),
            ("retry.supplier", &self.retry.supplier),
            ("retry.payment", &self.retry.payment),
            ("retry.webhook", &self.retry.webhook),
            ("retry.email", &self.retry.email),
            ("retry.alert", &self.retry.alert),
        ] {
            if schedule.max_attempts == 0
                || schedule.base_delay_ms < 10
                || schedule.max_delay_ms < schedule.base_delay_ms
            {
                return Err(ConfigError::Invalid {
                    key: "retry",
                    reason: format!(
                        "{key}: need max_attempts ≥ 1, base_delay_ms ≥ 10 and max_delay_ms ≥ base_delay_ms"
                    ),
                });
            }
        }
        for (key, secret) in [
            (
                "payments.generic_webhook_secret",
                &self.payments.generic_webhook_secret,
            ),
            (
                "payments.generic_webhook_secret_previous",
                &self.payments.generic_webhook_secret_previous,
            ),
        ] {
            use base64::Engine;
            if let Some(secret) = secret
                && base64::engine::general_purpose::STANDARD
                    .decode(secret.expose().trim_start_matches("whsec_"))
                    .map_or(true, |k| k.len() < 16)
            {
                return Err(invalid(
                    key,
                    "must be `whsec_` followed by the base64 of at least 16 random bytes",
                ));
            }
        }
        if self.retry.waiting.interval_ms < 10 {
            return Err(invalid("retry.waiting.interval_ms", "must be at least 10"));
        }
        if self.rescuer.interval_ms < 10 {
            return Err(invalid("rescuer.interval_ms", "must be at least 10"));
        }
        if self.discord.global_per_second == 0 || self.discord.global_per_second > 50 {
            return Err(invalid(
                "discord.global_per_second",
                "must be between 1 and 50 (Discord's global limit)",
            ));
        }
        for (name, s) in &self.suppliers {
            if s.requests_per_second == 0
                || !(s.base_url.starts_with("http://") || s.base_url.starts_with("https://"))
            {
                return Err(ConfigError::Invalid {
                    key: "suppliers",
                    reason: format!(
                        "suppliers.{name}: need an http(s) base_url and requests_per_second ≥ 1"
                    ),
                });
            }
        }
        if let Some(k) = &self.keys.encryption_key
            && crate::crypto::KeyCipher::from_base64(k.expose()).is_err()
        {
            return Err(invalid(
                "keys.encryption_key",
                "must be the base64 of exactly 32 bytes (e.g. `openssl rand -base64 32`)",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            return Err(invalid("log.format", "must be `pretty` or `json`"));
        }
        if self.relay.batch_size < 1 {
            return Err(invalid("relay.batch_size", "must be at least 1"));
        }
        if let Some(key) = &self.api.bootstrap_admin_key
            && key.expose().len() < 24
        {
            return Err(invalid(
                "api.bootstrap_admin_key",
                "must be at least 24 characters",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mark_linger_past_the_lease_margin_is_refused_by_name() {
        let mut s = super::Settings::load().expect("the defaults load");
        s.relay.mark_linger_ms = 4000;
        assert!(s.validate().is_ok(), "a second inside the 5 s lease");
        s.relay.mark_linger_ms = 4001;
        let refused = s.validate().expect_err("past the margin");
        assert!(
            refused.to_string().contains("relay.mark_linger_ms"),
            "{refused}"
        );
    }
}
