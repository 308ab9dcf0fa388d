//! The order system: an order API that answers at once, a transactional
//! outbox, one consumer group per follow-up job, and a simulator of the
//! external providers. See `docs/orders.md` for the event flow.
//!
//! The binary (`src/main.rs`) runs every part in one process on embedded
//! defaults, or one role per process against Kafka, PostgreSQL and Redis.

#![allow(unreachable_pub)]

pub mod api;
pub mod audit;
pub mod config;
pub mod db;
pub mod demo;
pub mod events;
pub mod money;
pub mod outbox;
pub mod shutdown;
pub mod simulator;
pub mod system;
pub mod telemetry;
pub mod workers;
