//! What every CSI call leaves behind: a tracing span carrying its method (so each JSON log line
//! of the call names it, beside the volume id the services log), and the metrics
//! `tarbox_csi_operations_total{method}`, `tarbox_csi_operation_duration_seconds{method}` and
//! `tarbox_csi_operation_errors_total{method,code}`. It wraps the gRPC server as a tower layer,
//! so the services themselves only translate calls.
//!
//! The volume gauges (`tarbox_volume_*`, `tarbox_snapshot_*`, `tarbox_mount_count`) are set by
//! [`record_volumes`] and [`record_mounts`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tarbox_fs::TenantInfo;
use tracing::Instrument as _;

/// The layer: wraps every gRPC call of the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// A service wrapped by [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

/// `CreateVolume` of `/csi.v1.Controller/CreateVolume`.
fn method_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

impl<S, B, R> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path());
        let span = tracing::info_span!("csi", method = %method);
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(
            async move {
                let result = call.await;
                let elapsed = started.elapsed().as_secs_f64();
                metrics::counter!("tarbox_csi_operations_total", "method" => method.clone())
                    .increment(1);
                metrics::histogram!("tarbox_csi_operation_duration_seconds", "method" => method.clone())
                    .record(elapsed);
                // A failed unary call answers with its status in the headers (trailers-only).
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .filter(|c| *c != "0")
                        .map(|c| tonic::Code::from_bytes(c.as_bytes())),
                    Err(_) => Some(tonic::Code::Unavailable),
                };
                match code {
                    Some(code) => {
                        metrics::counter!(
                            "tarbox_csi_operation_errors_total",
                            "method" => method,
                            "code" => format!("{code:?}")
                        )
                        .increment(1);
                        tracing::info!(?code, elapsed, "call failed");
                    }
                    None => tracing::debug!(elapsed, "call done"),
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Set the volume and snapshot gauges from the driver's live volumes (by volume id) and their
/// snapshot sizes.
pub(crate) fn record_volumes(volumes: &[(String, &TenantInfo)], snapshots: &[(String, u64)]) {
    metrics::gauge!("tarbox_volume_count").set(volumes.len() as f64);
    for (id, v) in volumes {
        let id = id.clone();
        let capacity = v.quota.bytes.unwrap_or(0) as f64;
        metrics::gauge!("tarbox_volume_capacity_bytes", "volume_id" => id.clone()).set(capacity);
        metrics::gauge!("tarbox_volume_used_bytes", "volume_id" => id).set(v.usage.bytes as f64);
    }
    metrics::gauge!("tarbox_snapshot_count").set(snapshots.len() as f64);
    for (id, bytes) in snapshots {
        metrics::gauge!("tarbox_snapshot_size_bytes", "snapshot_id" => id.clone())
            .set(*bytes as f64);
    }
}

/// Set the mount gauge of a node and record how long a stage took.
pub(crate) fn record_mounts(node: &str, staged: usize, stage_seconds: Option<f64>) {
    metrics::gauge!("tarbox_mount_count", "node" => node.to_string()).set(staged as f64);
    if let Some(s) = stage_seconds {
        metrics::histogram!("tarbox_mount_duration_seconds").record(s);
    }
}

#[cfg(test)]
mod tests {
    use super::method_of;

    #[test]
    fn methods_are_the_last_path_segment() {
        assert_eq!(method_of("/csi.v1.Controller/CreateVolume"), "CreateVolume");
        assert_eq!(method_of("/csi.v1.Node/NodeStageVolume"), "NodeStageVolume");
    }
}
