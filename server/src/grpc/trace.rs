//! A span per RPC (rpc.system, rpc.service, rpc.method, rpc.grpc.status_code),
//! continuing the caller's W3C `traceparent` from the request metadata.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The layer to put on the gRPC server.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTraceLayer;

impl<S> Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTrace { inner }
    }
}

/// The service the layer wraps around each RPC.
#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl<S, B, R> Service<http::Request<B>> for RpcTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            enduser.role = tracing::field::Empty,
            poolplane.token_fingerprint = tracing::field::Empty,
        );
        if span.is_disabled() {
            // No layer wants it (OTLP off): nothing to continue or record.
            return Box::pin(self.inner.call(request));
        }
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&Headers(request.headers()))
        });
        let _ = span.set_parent(parent);
        // Log lines inside the RPC carry its trace id (only when OTLP is on: off,
        // there is no OpenTelemetry context and the id is invalid).
        let trace_id = span.context().span().span_context().trace_id();
        if trace_id != opentelemetry::trace::TraceId::INVALID {
            span.record("trace_id", tracing::field::display(trace_id));
        }
        // Entered while the inner layers take the request, so that authentication
        // records the caller on this span.
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        }
        .instrument(span.clone());
        Box::pin(async move {
            let response = future.await?;
            span.record("rpc.grpc.status_code", status_code(&response));
            Ok(response)
        })
    }
}

/// The gRPC status of a response as far as its headers tell: errors travel in the
/// headers (trailers-only); a success's status is in the trailers: 0.
pub fn status_code<B>(response: &http::Response<B>) -> i32 {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0)
}
