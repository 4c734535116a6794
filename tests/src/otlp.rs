//! `OtlpCollector`: a real OTLP/gRPC receiver (the OpenTelemetry collector's
//! MetricsService and TraceService, from opentelemetry-proto) that keeps what it
//! is sent.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone, Default)]
struct Received {
    metrics: Arc<Mutex<Vec<Metric>>>,
    spans: Arc<Mutex<Vec<Span>>>,
}

/// Keeps every item of every scope of every resource of an export.
fn gather<R, S, T>(
    into: &Mutex<Vec<T>>,
    resources: Vec<R>,
    scopes: impl Fn(R) -> Vec<S>,
    items: impl Fn(S) -> Vec<T>,
) {
    let mut kept = into.lock().expect("received lock");
    for resource in resources {
        for scope in scopes(resource) {
            kept.extend(items(scope));
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let resources = request.into_inner().resource_metrics;
        gather(&self.metrics, resources, |r| r.scope_metrics, |s| s.metrics);
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let resources = request.into_inner().resource_spans;
        gather(&self.spans, resources, |r| r.scope_spans, |s| s.spans);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver on 127.0.0.1:0; stops on drop.
pub struct OtlpCollector {
    /// Its address.
    pub addr: SocketAddr,
    received: Received,
    token: CancellationToken,
}

impl OtlpCollector {
    /// Starts the receiver.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let received = Received::default();
        let token = CancellationToken::new();
        let stop = token.clone();
        let services = received.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(MetricsServiceServer::new(services.clone()))
                .add_service(TraceServiceServer::new(services))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await;
        });
        Ok(Self {
            addr,
            received,
            token,
        })
    }

    /// Every metric received so far (one entry per export of it).
    pub fn metrics(&self) -> Vec<Metric> {
        self.received.metrics.lock().expect("metrics lock").clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received.spans.lock().expect("spans lock").clone()
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
