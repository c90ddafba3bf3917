//! Courier's test support: fakes of what is outside our reach (a game server
//! speaking RCON, a TCP proxy that can cut a connection to a real service) and
//! `stack`, which starts an isolated Courier (own database, own queue prefix)
//! against the real Postgres, RabbitMQ and Redis.

pub mod bench;
pub mod fakes;
pub mod signing;
pub mod stack;
