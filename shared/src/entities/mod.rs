//! sea-orm entities, one per table of `cairn-migrations`.
//!
//! Rows are read and inserted through these; status changes are not written
//! through them but through [`crate::lifecycle`], whose every update is
//! conditional on the status it expects.

pub mod backup;
pub mod instance;
pub mod outbox;
