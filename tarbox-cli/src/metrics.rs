//! The Prometheus endpoint of long-running commands.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Latency buckets in seconds: from a cached stat to a slow database commit.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];

/// Serve the engine's metrics at `http://ADDR/metrics` from the current runtime.
pub fn serve(addr: SocketAddr) -> Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full("tarbox_operation_duration_seconds".into()),
            LATENCY_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("tarbox_audit_batch_size".into()),
                BATCH_BUCKETS,
            )
        })
        .context("invalid metric buckets")?
        .install()
        .with_context(|| format!("cannot serve metrics on --metrics-addr {addr}"))
}
