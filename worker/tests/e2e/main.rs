//! End-to-end tests: HTTP in, RabbitMQ, real workers, PostgreSQL and storage.
//! One test binary (one link step) with a module per concern.

mod bad_input;
mod faults;
mod openapi;
mod openstack_client;
mod progress;
mod rules;
mod scale_out;
mod walkthrough;
