//! poolplane's test fixtures: a real PostgreSQL ([`TestPg`]), a real server on an
//! ephemeral port ([`TestServer`]), the built server binary ([`ServerProcess`]) and the
//! real grpcurl ([`grpcurl`]).

pub mod bench;
mod fault_proxy;
mod grpcurl;
mod http;
mod leak;
mod load;
mod otlp;
mod process;
mod server;
mod test_pg;
mod tls;
mod wire;

pub use fault_proxy::FaultProxy;
pub use grpcurl::{Grpcurl, grpcurl, grpcurl_tls};
pub use http::{http_get, labelled_value, metric_value};
pub use leak::{
    ServerResources, active_backends, pool_backends, server_resources, wait_back_to,
    wait_no_backends,
};
pub use load::run_load_test;
pub use otlp::OtlpCollector;
pub use process::{ServerProcess, built_binary, process_alive, wait_health, wait_until};
pub use server::{ServingStatus, TestServer, test_secrets_key_file};
pub use test_pg::{TestDatabase, TestPg, connect, count_backends, proto_config, test_config};
pub use tls::{Issued, TestCa};
pub use wire::{login_of, pg_conninfo, pg_url, run_client, text};
