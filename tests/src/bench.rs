//! What the benchmark binaries (`src/bin/`) share: latency percentiles and their
//! `--flag value` arguments.

use std::time::Duration;

/// The `p` quantile (0..=1) of sorted durations, in milliseconds; 0 when empty.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The value after `--name` on the command line, if given.
pub fn flag_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_flags() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&d, 0.5), 51.0);
        assert_eq!(percentile_ms(&d, 1.0), 100.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
        let args = vec!["--watchers".to_string(), "7".to_string()];
        assert_eq!(flag_value(&args, "--watchers").as_deref(), Some("7"));
        assert_eq!(flag_value(&args, "--puts"), None);
    }
}
