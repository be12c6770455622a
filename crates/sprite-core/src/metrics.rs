//! Latency histograms of the operations users wait on (create, wake), recorded where
//! they happen and exposed with everything else on `/metrics` (sprite-server renders
//! the scrape). One registry per manager, so tests with several daemons keep apart.

use prometheus::{HistogramOpts, HistogramVec, Registry};

#[derive(Debug, Clone)]
pub struct CoreMetrics {
    pub registry: Registry,
    /// `source`: `pool` (a ready sprite taken), `new` or `fork` (a checkpoint or template).
    pub create_seconds: HistogramVec,
    /// `from`: `warm` or `cold`.
    pub wake_seconds: HistogramVec,
}

/// A histogram of latencies (1 ms to about 33 s) with one label, in `registry`.
fn latency(registry: &Registry, name: &str, help: &str, label: &str) -> HistogramVec {
    let buckets = prometheus::exponential_buckets(0.001, 2.0, 16)
        .expect("constant bucket parameters are valid");
    let vec = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &[label])
        .expect("constant histogram definitions are valid");
    registry
        .register(Box::new(vec.clone()))
        .expect("each histogram is registered once in a fresh registry");
    vec
}

impl CoreMetrics {
    pub fn new() -> CoreMetrics {
        let registry = Registry::new();
        CoreMetrics {
            create_seconds: latency(
                &registry,
                "sprites_create_seconds",
                "Time to create a sprite, from the API call to a sprite that runs",
                "source",
            ),
            wake_seconds: latency(
                &registry,
                "sprites_wake_seconds",
                "Time to wake a sleeping sprite, until it runs",
                "from",
            ),
            registry,
        }
    }
}

impl Default for CoreMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn histograms_are_registered() {
        let metrics = super::CoreMetrics::new();
        metrics
            .wake_seconds
            .with_label_values(&["cold"])
            .observe(0.08);
        let names: Vec<String> = metrics
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(
            names.contains(&"sprites_wake_seconds".to_string()),
            "{names:?}"
        );
    }
}
