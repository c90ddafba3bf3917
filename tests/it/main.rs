//! Courier's end-to-end suite: one binary, one module per capability. Every
//! test starts its own isolated stack (database, queue prefix) against the real
//! Postgres, RabbitMQ and Redis; only the outside world is faked.

mod bench;
mod dead_letters;
mod discord;
mod keys;
mod limits;
mod orders;
mod outbox;
mod rcon_client;
mod redelivery;
mod rescuer;
mod retries;
mod validation;
