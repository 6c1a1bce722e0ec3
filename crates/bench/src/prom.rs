//! Reading counters back from a Prometheus registry (libp2p's bandwidth and gossipsub metrics
//! are only reachable through their registry).

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// The sum of every sample of `registry` whose metric name is `name` and whose label set contains
/// every `key="value"` pair in `labels`.
pub fn sum(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut text = String::new();
    if encode(&mut text, registry).is_err() {
        return 0.0;
    }
    sum_text(&text, name, labels)
}

/// [`sum`] over already encoded exposition text.
pub fn sum_text(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_series_only() {
        let text = "# HELP x\n\
            libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp\",direction=\"Outbound\"} 100\n\
            libp2p_bandwidth_bytes_total{protocols=\"/ip4/udp/quic-v1\",direction=\"Outbound\"} 5\n\
            libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp\",direction=\"Inbound\"} 70\n\
            other_total 9\n";
        let out = [("direction", "Outbound")];
        assert_eq!(sum_text(text, "libp2p_bandwidth_bytes_total", &out), 105.0);
        assert_eq!(sum_text(text, "libp2p_bandwidth_bytes_total", &[]), 175.0);
        assert_eq!(sum_text(text, "other_total", &[]), 9.0);
        assert_eq!(sum_text(text, "missing", &[]), 0.0);
    }
}
