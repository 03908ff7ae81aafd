//! End-to-end tests: HTTP in, RabbitMQ, real workers, PostgreSQL and storage.
//! One test binary (one link step) with a module per concern.

mod auth;
mod bad_input;
mod batches;
mod encryption;
mod faults;
mod hostile;
mod layout;
mod openapi;
mod openstack_client;
mod progress;
mod quotas;
mod rules;
mod scale_out;
mod submissions;
mod walkthrough;
