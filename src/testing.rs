//! Helpers for tests and benches: unique resource names and service addresses.

use rand::distr::{Alphanumeric, SampleString};

/// `test_<name>_<random>`: a unique topic, checkpoint id, schema or index name.
pub fn unique_name(name: &str) -> String {
    let suffix = Alphanumeric
        .sample_string(&mut rand::rng(), 10)
        .to_lowercase();
    format!("test_{name}_{suffix}")
}

/// A service address from the environment (`TEST_KAFKA_BOOTSTRAP`, ...), with a default.
pub fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}
