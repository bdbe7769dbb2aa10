//! The daemon's Prometheus metrics: one registry for the process, fed by the
//! layers that see each thing happen (the API, the store's writer, the
//! harness, agents' model calls) and, at scrape time, by what is read off the
//! store (revision, watchers, loops by state). A leaf module: everything may
//! use it, it uses nothing of ours.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/maestro.v1.Service/Method`, or `other` for a path the server does not serve.
    pub method: String,
    /// The gRPC status name (`OK`, `PERMISSION_DENIED`, …).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// `input` or `output`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The stop reason, or `error`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// The rule that denied (e.g. `path.outside-workspace`).
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~26 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<MethodLabels, Histogram>,
    pub model_calls: Family<OutcomeLabels, Counter>,
    pub model_tokens: Family<TokenLabels, Counter>,
    pub harness_denials: Family<RuleLabels, Counter>,
    pub store_write_seconds: Histogram,
    pub store_reopen_seconds: Histogram,
    pub revision: Gauge,
    pub watchers: Gauge,
    pub loops: Family<StateLabels, Gauge>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("maestro");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register("rpc_requests", "gRPC requests handled, by method and status", rpc_requests.clone());
        let rpc_seconds = Family::<MethodLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "rpc_duration_seconds",
            "Time to a gRPC response's headers (the whole call for unary ones)",
            rpc_seconds.clone(),
        );
        let model_calls = Family::<OutcomeLabels, Counter>::default();
        registry.register("model_calls", "Model calls by agents, by stop reason or error", model_calls.clone());
        let model_tokens = Family::<TokenLabels, Counter>::default();
        registry.register("model_tokens", "Tokens sent to and received from models", model_tokens.clone());
        let harness_denials = Family::<RuleLabels, Counter>::default();
        registry.register("harness_denials", "Agent actions the harness denied, by rule", harness_denials.clone());
        let store_write_seconds = latency_histogram();
        registry.register(
            "store_write_duration_seconds",
            "Time to make one write durable: a group commit of the sled store, a transaction on etcd",
            store_write_seconds.clone(),
        );
        let store_reopen_seconds = latency_histogram();
        registry.register(
            "store_sled_reopen_duration_seconds",
            "Pauses of the sled store while its writer reopens sled (which bounds a crash recovery)",
            store_reopen_seconds.clone(),
        );
        let revision = Gauge::default();
        registry.register("store_revision", "The store's current revision", revision.clone());
        let watchers = Gauge::default();
        registry.register("watchers", "Open watch streams", watchers.clone());
        let loops = Family::<StateLabels, Gauge>::default();
        registry.register("loops", "AutoLoops by state", loops.clone());
        Metrics {
            registry,
            rpc_requests,
            rpc_seconds,
            model_calls,
            model_tokens,
            harness_denials,
            store_write_seconds,
            store_reopen_seconds,
            revision,
            watchers,
            loops,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_every_family() {
        let metrics = get();
        metrics.rpc_requests.get_or_create(&RpcLabels { method: "/x".into(), code: "OK".into() }).inc();
        metrics.harness_denials.get_or_create(&RuleLabels { rule: "path.outside-workspace".into() }).inc();
        // A family shows once it has a member.
        metrics.rpc_seconds.get_or_create(&MethodLabels { method: "/x".into() }).observe(0.01);
        metrics.model_tokens.get_or_create(&TokenLabels { direction: "input".into() }).inc_by(5);
        metrics.loops.get_or_create(&StateLabels { state: "RUNNING".into() }).set(1);
        let text = metrics.encode();
        for name in [
            "maestro_rpc_requests_total{method=\"/x\",code=\"OK\"}",
            "maestro_rpc_duration_seconds",
            "maestro_model_tokens_total",
            "maestro_harness_denials_total{rule=\"path.outside-workspace\"}",
            "maestro_store_write_duration_seconds",
            "maestro_store_revision",
            "maestro_watchers",
            "maestro_loops",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
