//! cairn's domain, shared by the API, the workers and the tests.
//!
//! Everything that two processes must agree on lives here: configuration,
//! the schema's entities, the job state machine ([`lifecycle`]), the outbox
//! and queue that carry jobs, artifact storage, and the datastores that know
//! how to back up and restore one kind of instance.

pub mod batch;
pub mod config;
pub mod datastore;
pub mod db;
pub mod entities;
pub mod failure;
pub mod lifecycle;
pub mod outbox;
pub mod queue;
pub mod seal;
pub mod status;
pub mod storage;
pub mod telemetry;
pub mod volume;

pub use config::Config;
