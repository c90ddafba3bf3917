//! `courier-api`: the HTTP API and the outbox relay.
//!
//! # Layout
//! - `startup`: builds the router and starts the server and the relay; returns
//!   the bound address so tests can use port 0.
//! - `auth`: API keys (bearer tokens) and scopes.
//! - `error`: the one JSON error shape, with stable codes.
//! - `json`: the body extractor that names the field at fault and refuses
//!   non-text code points.
//! - `extract`: path and query extractors in the error shape; the URI check
//!   and the middleware that keeps every error in that shape.
//! - `routes/`: thin handlers that call `courier_shared::service`.
//! - `relay`: publishes outbox rows to RabbitMQ with publisher confirms.
//! - `metrics`: the process's Prometheus series and the request-tracking middleware.
//! - `openapi`: the OpenAPI 3.1 document, generated from the handlers and types.
//! - `export_format`: the order export's columns and cells (the download and the CLI).
//! - `export_cli`: `courier-api export`, the same export to a file, with a progress bar.

pub mod admin_cli;
pub mod auth;
pub mod console;
pub mod error;
pub mod export_cli;
pub mod export_format;
pub mod extract;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod relay;
pub mod routes;
pub mod seed;
pub mod signature;
pub mod startup;
pub mod storage;
pub mod waiters;
