//! The API process's series, served at `GET /metrics` on `api.bind`.
//!
//! | series | what |
//! |---|---|
//! | `courier_http_requests_total{method,route,status}` | requests answered, by route template |
//! | `courier_http_request_duration_seconds{method,route}` | time to answer |
//! | `courier_accept_batch_size` | orders written in one statement (group commit) |
//! | `courier_status_read_batch_size` | status reads answered by one statement |
//! | `courier_outbox_published_total` | outbox rows published with a confirm |
//! | `courier_outbox_publish_delay_seconds` | commit of the row → broker's confirm |
//! | `courier_outbox_backlog` | rows not yet published (at scrape) |
//! | `courier_outbox_oldest_seconds` | age of the oldest unpublished row (at scrape) |
//! | `courier_dead_letters_open` | open dead letters (at scrape) |
//! | `courier_deliveries_held` | deliveries held for a person (at scrape) |
//! | `courier_deliveries_waiting` | deliveries waiting for an outside condition (at scrape) |
//! | `courier_queue_messages{queue}` | messages ready in each queue (at scrape) |
//! | `courier_queue_consumers{queue}` | consumers of each queue (at scrape) |
//!
//! The gauges marked "at scrape" describe the whole installation, read from
//! Postgres and RabbitMQ when scraped: every API replica reports the same
//! values (take `max` across instances). They are refreshed at most every
//! `REFRESH` and by one scrape at a time, each read bounded by a timeout; a
//! scrape that finds a refresh running, or a source that does not answer,
//! serves the last values. So a flood of scrapes costs no database
//! connections, and a broken broker cannot make scrapes hang.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use courier_shared::metrics::{QueueLabel, Registry, seconds_histogram};
use courier_shared::queue::Broker;
use courier_shared::queue::topology::Topology;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Unit;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct ApiMetrics {
    registry: Registry,
    pub requests: Family<HttpLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub published: Counter,
    pub accept_batch: Histogram,
    pub status_read_batch: Histogram,
    pub publish_delay: Histogram,
    /// Download responses served (whole files and ranges).
    pub downloads: Counter,
    outbox_backlog: Gauge,
    outbox_oldest: FloatGauge,
    dead_letters_open: Gauge,
    held: Gauge,
    waiting: Gauge,
    queue_messages: Family<QueueLabel, Gauge>,
    queue_consumers: Family<QueueLabel, Gauge>,
    /// A channel for passive declares at scrape time, opened on first use,
    /// and when the gauges were last read.
    state: tokio::sync::Mutex<ScrapeState>,
}

#[derive(Default)]
struct ScrapeState {
    channel: Option<(lapin::Connection, lapin::Channel)>,
    refreshed: Option<Instant>,
}

/// The installation-wide gauges are read at most this often.
const REFRESH: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest a scrape waits for Postgres or RabbitMQ.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Default for ApiMetrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("courier");
        let requests = Family::<HttpLabels, Counter>::default();
        r.register(
            "http_requests",
            "HTTP requests answered, by route",
            requests.clone(),
        );
        let duration: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(seconds_histogram);
        r.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request",
            Unit::Seconds,
            duration.clone(),
        );
        let published = Counter::default();
        r.register(
            "outbox_published",
            "Outbox rows published with a broker confirm",
            published.clone(),
        );
        let accept_batch = courier_shared::metrics::size_histogram();
        r.register(
            "accept_batch_size",
            "Orders written in one statement (group commit of accepts)",
            accept_batch.clone(),
        );
        let status_read_batch = courier_shared::metrics::size_histogram();
        r.register(
            "status_read_batch_size",
            "Status reads (GET /v1/orders/{id}) answered by one statement",
            status_read_batch.clone(),
        );
        let publish_delay = seconds_histogram();
        r.register_with_unit(
            "outbox_publish_delay",
            "From the outbox row's commit to the broker's confirm",
            Unit::Seconds,
            publish_delay.clone(),
        );
        let downloads = Counter::default();
        r.register(
            "downloads_served",
            "Download responses served (whole files and byte ranges)",
            downloads.clone(),
        );
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let outbox_backlog = gauge(&mut r, "outbox_backlog", "Outbox rows not yet published");
        let outbox_oldest = FloatGauge::default();
        r.register_with_unit(
            "outbox_oldest",
            "Age of the oldest unpublished outbox row",
            Unit::Seconds,
            outbox_oldest.clone(),
        );
        let dead_letters_open = gauge(&mut r, "dead_letters_open", "Open dead letters");
        let held = gauge(&mut r, "deliveries_held", "Deliveries held for a person");
        let waiting = gauge(
            &mut r,
            "deliveries_waiting",
            "Deliveries waiting for an outside condition",
        );
        let queue_messages = Family::<QueueLabel, Gauge>::default();
        r.register(
            "queue_messages",
            "Messages ready in a queue",
            queue_messages.clone(),
        );
        let queue_consumers = Family::<QueueLabel, Gauge>::default();
        r.register(
            "queue_consumers",
            "Consumers of a queue",
            queue_consumers.clone(),
        );
        ApiMetrics {
            registry: r,
            requests,
            duration,
            published,
            accept_batch,
            status_read_batch,
            publish_delay,
            downloads,
            outbox_backlog,
            outbox_oldest,
            dead_letters_open,
            held,
            waiting,
            queue_messages,
            queue_consumers,
            state: tokio::sync::Mutex::new(ScrapeState::default()),
        }
    }
}

impl ApiMetrics {
    /// Reads the installation-wide gauges and encodes everything. A source
    /// that does not answer leaves its gauges at their last value (its
    /// failure shows in `/readyz`, not as a failed scrape).
    pub async fn render(
        &self,
        pool: &sqlx::PgPool,
        broker: &Broker,
        topology: &Topology,
    ) -> String {
        if let Ok(mut state) = self.state.try_lock()
            && state.refreshed.is_none_or(|at| at.elapsed() >= REFRESH)
        {
            state.refreshed = Some(Instant::now());
            let backlog =
                tokio::time::timeout(READ_TIMEOUT, courier_shared::db::backlog::snapshot(pool))
                    .await;
            if let Ok(Ok(b)) = backlog {
                self.outbox_backlog.set(b.outbox);
                self.outbox_oldest.set(b.outbox_oldest_seconds);
                self.dead_letters_open.set(b.dead_letters_open);
                self.held.set(b.held);
                self.waiting.set(b.waiting);
            }
            let read = tokio::time::timeout(
                READ_TIMEOUT,
                self.read_queues(&mut state.channel, broker, topology),
            )
            .await;
            if read.is_err() {
                // A broker that stopped answering: open a new channel next time.
                state.channel = None;
            }
        }
        courier_shared::metrics::encode(&self.registry)
    }

    async fn read_queues(
        &self,
        slot: &mut Option<(lapin::Connection, lapin::Channel)>,
        broker: &Broker,
        topology: &Topology,
    ) {
        if slot.as_ref().is_none_or(|(_, ch)| !ch.status().connected()) {
            let opened = async {
                let conn = broker.connect().await?;
                let channel = conn.create_channel().await?;
                Ok::<_, lapin::Error>((conn, channel))
            }
            .await;
            *slot = match opened {
                Ok(pair) => Some(pair),
                Err(_) => return,
            };
        }
        let Some((_, channel)) = slot.as_ref() else {
            return;
        };
        for queue in topology.all_queues() {
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await;
            match declared {
                Ok(q) => {
                    let label = QueueLabel { queue };
                    self.queue_messages
                        .get_or_create(&label)
                        .set(i64::from(q.message_count()));
                    self.queue_consumers
                        .get_or_create(&label)
                        .set(i64::from(q.consumer_count()));
                }
                // A missing queue closes the channel; open a new one next time.
                Err(_) => {
                    *slot = None;
                    return;
                }
            }
        }
    }
}

/// Counts and times every routed request by its route template (never the
/// raw path, so ids do not become series).
pub async fn track(State(metrics): State<Arc<ApiMetrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    metrics
        .duration
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
