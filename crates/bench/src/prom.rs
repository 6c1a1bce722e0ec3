//! Reading counters back from a Prometheus registry (libp2p's bandwidth and gossipsub metrics
//! are only reachable through their registry), or from a node's `GET /metrics` text.

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

/// Every sample of metric `name` in exposition `text`: its labels (in the order written) and
/// its value. Lines that do not parse are skipped: a scrape is read, never trusted to be whole.
pub fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            Some((parse_labels(label_text)?, value.parse::<f64>().ok()?))
        })
        .collect()
}

/// `k="v",k2="v2"` as pairs; `None` when malformed. Values are taken as written (our metrics'
/// label values hold no quotes or backslashes to unescape).
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let (value, after) = after.split_once('"')?;
        out.push((key.to_string(), value.to_string()));
        rest = after.strip_prefix(',').unwrap_or(after);
    }
    Some(out)
}

/// The cumulative buckets of histogram `name` (without `_bucket`) whose label set contains
/// every pair of `labels`, summed per upper bound and sorted by it: `(le, count)`, with `+Inf`
/// as `f64::INFINITY`.
pub fn histogram_buckets(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for (sample_labels, value) in samples(text, &format!("{name}_bucket")) {
        let matches = labels
            .iter()
            .all(|(k, v)| sample_labels.iter().any(|(sk, sv)| sk == k && sv == v));
        let le = sample_labels
            .iter()
            .find(|(k, _)| k == "le")
            .and_then(|(_, v)| v.parse::<f64>().ok());
        let (true, Some(le)) = (matches, le) else {
            continue;
        };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, count)) => *count += value,
            None => buckets.push((le, value)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The `q`-quantile (0 ≤ q ≤ 1) of cumulative histogram `buckets` (sorted by upper bound, the
/// last `+Inf`), interpolated linearly inside the bucket it falls in, as Prometheus'
/// `histogram_quantile` does: a quantile in the `+Inf` bucket is the highest finite bound.
/// `None` when the histogram is empty.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = count - below;
            let fraction = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (le - lower) * fraction);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
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

    #[test]
    fn samples_keep_every_label() {
        let text = "# TYPE x counter\n\
            playergold_relay_bytes_total{direction=\"out\",kind=\"announce\"} 12\n\
            playergold_relay_bytes_total{direction=\"in\",kind=\"block\"} 3\n\
            playergold_bans 2\n";
        let relay = samples(text, "playergold_relay_bytes_total");
        assert_eq!(relay.len(), 2);
        assert_eq!(
            relay[0].0,
            vec![
                ("direction".to_string(), "out".to_string()),
                ("kind".to_string(), "announce".to_string())
            ]
        );
        assert_eq!(relay[0].1, 12.0);
        assert_eq!(samples(text, "playergold_bans"), vec![(vec![], 2.0)]);
    }

    #[test]
    fn histogram_buckets_and_quantiles_follow_prometheus() {
        let text = "\
            d_seconds_bucket{le=\"0.1\",kind=\"tx\"} 50\n\
            d_seconds_bucket{le=\"1.0\",kind=\"tx\"} 90\n\
            d_seconds_bucket{le=\"+Inf\",kind=\"tx\"} 100\n\
            d_seconds_bucket{le=\"0.1\",kind=\"block\"} 7\n\
            d_seconds_count{kind=\"tx\"} 100\n";
        let tx = histogram_buckets(text, "d_seconds", &[("kind", "tx")]);
        assert_eq!(tx, vec![(0.1, 50.0), (1.0, 90.0), (f64::INFINITY, 100.0)]);
        // Half of the first bucket: interpolated from 0.
        assert_eq!(histogram_quantile(0.25, &tx), Some(0.05));
        assert_eq!(histogram_quantile(0.5, &tx), Some(0.1));
        // 70th: halfway through (0.1, 1.0].
        let p70 = histogram_quantile(0.7, &tx).unwrap_or_default();
        assert!((p70 - 0.55).abs() < 1e-9, "{p70}");
        // In the +Inf bucket: the highest finite bound.
        assert_eq!(histogram_quantile(0.99, &tx), Some(1.0));
        assert_eq!(histogram_quantile(0.5, &[]), None);
        assert_eq!(histogram_quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
    }
}
