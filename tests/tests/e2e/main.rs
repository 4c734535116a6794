//! poolplane's end-to-end tests in one binary: a real embedded PostgreSQL shared by
//! every test of the process (a database of its own per test), real servers on
//! ephemeral loopback ports, the built binaries and real clients. One binary links
//! the stack once; the tests mostly wait on I/O, so `tests/run.sh` runs them with
//! more threads than cores. Tests that need the process to themselves (the
//! descriptor and task counts of `faults`) are a binary of their own.

// The 80-line rule is for server/ and client/: an end-to-end test is one scenario
// read top to bottom, its steps in the order they happen.
#![allow(clippy::too_many_lines)]

mod allowlist;
mod auth;
mod bounds;
mod budget;
mod cluster_restart;
mod config_changes;
mod demo;
mod deploy;
mod embedded_pg;
mod examples;
mod faults_process;
mod frontdoor;
mod frontdoor_console;
mod frontdoor_isolation;
mod frontdoor_ops;
mod frontdoor_session;
mod group;
mod leak_scan;
mod load_test_sql;
mod loadtest;
mod metrics_history;
mod mtls;
mod otlp;
mod pool_cache;
mod pool_health;
mod pool_lifecycle;
mod pool_service;
mod pool_service_process;
mod pool_sizing;
mod poolctl;
mod prometheus;
mod query_service;
mod sdk;
mod secrets_at_rest;
mod server;
mod server_binary;
mod tls_databases;
