//! The console's view of the stages: Prometheus text from this process and
//! from each configured target, parsed and summed per stage.
//!
//! Only the figures the page shows are kept: per stage its readiness,
//! records in and out, consumer lag, dead letters and producer queue; the
//! lag per topic-partition; dead letters per stage and reason; the sink's
//! freshness histograms; alerts raised and delivered. Counters are sent
//! as they are (the page works out rates from two answers). A target that
//! does not answer is listed as down, and its figures are missing, not 0.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The consuming and producing stages, in pipeline order.
pub const STAGES: [&str; 4] = ["ingest", "enrich", "sink", "alert"];

/// One target's metrics text, `None` when it did not answer.
#[derive(Debug, Clone)]
pub struct Source {
    pub target: String,
    pub text: Option<String>,
}

/// One sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus text exposition (what the admin server renders):
/// comments skipped, an unparsable line skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(body) => parse_labels(body)?,
        None => (Vec::new(), rest),
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `k="v",...}` with its escapes; returns the labels and what follows `}`.
fn parse_labels(body: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = body;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(tail) = rest.strip_prefix('}') {
            return Some((labels, tail));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        let quoted = rest[eq + 1..].strip_prefix('"')?;
        let mut chars = quoted.char_indices();
        let mut value = String::new();
        let close = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        rest = &quoted[close + 1..];
        labels.push((key, value));
    }
}

/// GETs `target`'s `/metrics` (`host:port` or `http://host:port`), plain
/// HTTP/1.0: admin servers are inside the deployment, never behind TLS.
pub async fn fetch(target: &str, timeout: Duration) -> Option<String> {
    let addr = target
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let call = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8(buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.to_owned())
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
    };
    tokio::time::timeout(timeout, call).await.ok().flatten()
}

/// What the page shows of one stage. Figures are summed over the targets
/// that run the stage; `None`: no target exports it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StageView {
    pub stage: String,
    /// Every component of the stage ready, on every target.
    pub ready: bool,
    /// `component: reason` held, for the tooltip.
    pub not_ready: Vec<String>,
    pub records_in: Option<f64>,
    pub records_out: Option<f64>,
    pub consumer_lag: Option<f64>,
    pub dead_letters: Option<f64>,
    pub producer_queue: Option<f64>,
}

/// Lag of one topic-partition (summed over instances: only its owner
/// reports more than 0).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionLag {
    pub stage: String,
    pub topic: String,
    pub partition: String,
    pub lag: f64,
}

/// Dead letters counted by one stage for one reason since it started.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetterCount {
    pub stage: String,
    pub reason: String,
    pub count: f64,
}

/// A cumulative histogram: (upper bound, count) ascending, `+Inf` last.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

/// Whether each target answered.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetView {
    pub target: String,
    pub up: bool,
}

/// The whole answer of `/console/api/stages`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct View {
    pub at_ms: i64,
    pub targets: Vec<TargetView>,
    pub stages: Vec<StageView>,
    pub lag: Vec<PartitionLag>,
    pub dead_letters: Vec<DeadLetterCount>,
    /// `occurred` and `received` → stored (the sink's histograms).
    pub freshness: BTreeMap<String, Histogram>,
    pub alerts_raised: Option<f64>,
    /// Delivery attempts by outcome.
    pub deliveries: BTreeMap<String, f64>,
}

fn add(slot: &mut Option<f64>, v: f64) {
    *slot = Some(slot.unwrap_or(0.0) + v);
}

impl View {
    /// Sums the samples of every source.
    pub fn of(sources: &[Source], at_ms: i64) -> View {
        let mut stages: BTreeMap<&str, StageView> = BTreeMap::new();
        let mut lag: BTreeMap<(String, String, String), f64> = BTreeMap::new();
        let mut dead: BTreeMap<(String, String), f64> = BTreeMap::new();
        let mut freshness: BTreeMap<String, Histogram> = BTreeMap::new();
        let mut buckets: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
        let mut alerts_raised = None;
        let mut deliveries = BTreeMap::new();
        for text in sources.iter().filter_map(|s| s.text.as_deref()) {
            for s in parse(text) {
                if s.name == "xoflow_stage_ready" || s.name == "xoflow_stage_not_ready" {
                    let Some(component) = s.label("stage") else {
                        continue;
                    };
                    // `ingest-http`, `alert-api`: components of their stage.
                    let Some(stage) = STAGES
                        .iter()
                        .find(|st| component == **st || component.starts_with(&format!("{st}-")))
                    else {
                        continue;
                    };
                    let v = stages.entry(stage).or_insert_with(|| StageView {
                        stage: (*stage).to_owned(),
                        ready: true,
                        ..Default::default()
                    });
                    if s.name == "xoflow_stage_ready" {
                        v.ready &= s.value >= 1.0;
                    } else if s.value >= 1.0 {
                        let reason = s.label("reason").unwrap_or("?");
                        v.not_ready.push(format!("{component}: {reason}"));
                    }
                    continue;
                }
                let Some(rest) = s.name.strip_prefix("xoflow_") else {
                    continue;
                };
                let Some((stage, metric)) = STAGES
                    .iter()
                    .find_map(|st| rest.strip_prefix(st)?.strip_prefix('_').map(|m| (*st, m)))
                else {
                    continue;
                };
                let v = stages.entry(stage).or_insert_with(|| StageView {
                    stage: stage.to_owned(),
                    ready: true,
                    ..Default::default()
                });
                match metric {
                    "records_in_total" => add(&mut v.records_in, s.value),
                    "records_out_total" => add(&mut v.records_out, s.value),
                    "producer_queue_records" => add(&mut v.producer_queue, s.value),
                    "consumer_lag_records" => {
                        add(&mut v.consumer_lag, s.value);
                        let key = (
                            stage.to_owned(),
                            s.label("topic").unwrap_or_default().to_owned(),
                            s.label("partition").unwrap_or_default().to_owned(),
                        );
                        *lag.entry(key).or_default() += s.value;
                    }
                    "dead_letters_total" => {
                        add(&mut v.dead_letters, s.value);
                        let reason = s.label("reason").unwrap_or("?").to_owned();
                        *dead.entry((stage.to_owned(), reason)).or_default() += s.value;
                    }
                    "alerts_raised_total" => add(&mut alerts_raised, s.value),
                    "deliveries_total" => {
                        *deliveries
                            .entry(s.label("outcome").unwrap_or("?").to_owned())
                            .or_default() += s.value;
                    }
                    m => {
                        let Some((which, part)) = m
                            .strip_suffix("_seconds_bucket")
                            .map(|w| (w, "bucket"))
                            .or_else(|| m.strip_suffix("_seconds_count").map(|w| (w, "count")))
                            .or_else(|| m.strip_suffix("_seconds_sum").map(|w| (w, "sum")))
                        else {
                            continue;
                        };
                        let Some(which) = which.strip_suffix("_to_stored") else {
                            continue;
                        };
                        let h = freshness.entry(which.to_owned()).or_default();
                        match part {
                            "count" => h.count += s.value,
                            "sum" => h.sum += s.value,
                            _ => {
                                let le = match s.label("le") {
                                    Some("+Inf") => f64::INFINITY,
                                    Some(b) => b.parse().unwrap_or(f64::NAN),
                                    None => continue,
                                };
                                if le.is_nan() {
                                    continue;
                                }
                                let e = buckets
                                    .entry(which.to_owned())
                                    .or_default()
                                    .entry(le.to_bits())
                                    .or_insert((le, 0.0));
                                e.1 += s.value;
                            }
                        }
                    }
                }
            }
        }
        for (which, b) in buckets {
            let mut b: Vec<(f64, f64)> = b.into_values().collect();
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            freshness.entry(which).or_default().buckets = b;
        }
        View {
            at_ms,
            targets: sources
                .iter()
                .map(|s| TargetView {
                    target: s.target.clone(),
                    up: s.text.is_some(),
                })
                .collect(),
            stages: STAGES.iter().filter_map(|st| stages.remove(st)).collect(),
            lag: lag
                .into_iter()
                .map(|((stage, topic, partition), lag)| PartitionLag {
                    stage,
                    topic,
                    partition,
                    lag,
                })
                .collect(),
            dead_letters: dead
                .into_iter()
                .map(|((stage, reason), count)| DeadLetterCount {
                    stage,
                    reason,
                    count,
                })
                .collect(),
            freshness,
            alerts_raised,
            deliveries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE xoflow_stage_ready gauge
xoflow_stage_ready{stage="ingest"} 1
xoflow_stage_ready{stage="ingest-http"} 1
xoflow_stage_ready{stage="sink"} 0
xoflow_stage_not_ready{stage="sink",reason="clickhouse_unreachable"} 1
xoflow_stage_not_ready{stage="sink",reason="starting"} 0
xoflow_ingest_records_in_total 120
xoflow_ingest_records_out_total 117
xoflow_ingest_dead_letters_total{reason="INVALID"} 3
xoflow_sink_consumer_lag_records{topic="t.enriched",partition="0"} 5
xoflow_sink_consumer_lag_records{topic="t.enriched",partition="1"} 0
xoflow_sink_occurred_to_stored_seconds_bucket{le="1"} 2
xoflow_sink_occurred_to_stored_seconds_bucket{le="+Inf"} 4
xoflow_sink_occurred_to_stored_seconds_count 4
xoflow_sink_occurred_to_stored_seconds_sum 7.5
xoflow_alert_deliveries_total{format="generic",outcome="delivered"} 2
odd{label="a \"quoted\" \\ value",} 1
"#;

    #[test]
    fn text_exposition_is_parsed_with_escapes() {
        let s = parse(TEXT);
        let odd = s.iter().find(|s| s.name == "odd").expect("odd");
        assert_eq!(
            odd.labels,
            [("label".into(), r#"a "quoted" \ value"#.into())]
        );
        assert_eq!(s.len(), 16);
    }

    #[test]
    fn sources_are_summed_per_stage_and_a_silent_target_is_down() {
        let sources = [
            Source {
                target: "a".into(),
                text: Some(TEXT.into()),
            },
            Source {
                target: "b".into(),
                text: Some(TEXT.into()),
            },
            Source {
                target: "c".into(),
                text: None,
            },
        ];
        let v = View::of(&sources, 7);
        assert_eq!(
            v.targets.iter().map(|t| t.up).collect::<Vec<_>>(),
            [true, true, false]
        );
        let ingest = &v.stages[0];
        assert_eq!(
            (
                ingest.stage.as_str(),
                ingest.ready,
                ingest.records_in,
                ingest.dead_letters
            ),
            ("ingest", true, Some(240.0), Some(6.0))
        );
        let sink = &v.stages[1];
        assert_eq!(
            (sink.stage.as_str(), sink.ready, sink.consumer_lag),
            ("sink", false, Some(10.0))
        );
        assert_eq!(sink.not_ready[0], "sink: clickhouse_unreachable");
        assert_eq!(v.lag.len(), 2);
        let h = &v.freshness["occurred"];
        assert_eq!(h.buckets, [(1.0, 4.0), (f64::INFINITY, 8.0)]);
        assert_eq!((h.count, h.sum), (8.0, 15.0));
        assert_eq!(v.deliveries["delivered"], 4.0);
    }
}
