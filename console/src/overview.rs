//! The overview: a small live page (htmx polls a fragment every 2 s) with the
//! platform's counters and charts for operators and the principal's subscriptions by status.
//!
//! The charts are server-drawn inline SVG (no script: the CSP forbids inline code) from
//! the last few minutes of `/metrics` readings, which the console takes while someone
//! looks at the overview (at most one a second, whoever polls) and keeps in memory.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::response::{Html, IntoResponse};
use maud::{Markup, html};

use crate::{
    error::PageResult,
    layout::{badge, s},
    session::Role,
    subscriptions::items,
    web::Console,
};

/// The sum of every sample of the counter `metric` whose labels contain `label` (all
/// when `None`), in the Prometheus text format; counters count whole things.
pub(crate) fn metric_sum(text: &str, metric: &str, label: Option<&str>) -> u64 {
    let sum: f64 = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest),
                None => (series, ""),
            };
            (name == metric && label.is_none_or(|l| labels.contains(l)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum();
    // An empty f64 sum is -0.0; a counter is never negative.
    sum.max(0.0).round() as u64
}

/// The sum over label sets of a histogram's cumulative buckets: `(le, count)`, by `le`.
pub(crate) fn histogram_buckets(text: &str, metric: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{metric}_bucket");
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        if name != bucket {
            continue;
        }
        let le = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("le=\""))
            .and_then(|l| l.split('"').next())
            .and_then(|l| match l {
                "+Inf" => Some(f64::INFINITY),
                other => other.parse::<f64>().ok(),
            });
        if let (Some(le), Ok(count)) = (le, value.parse::<f64>()) {
            // f64 bits of a non-negative number sort like the number.
            by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += count;
        }
    }
    by_le.into_values().collect()
}

/// The `q`-quantile of the observations between two readings of a histogram (as
/// Prometheus' `histogram_quantile` does: linear within the bucket); `None` without any.
pub(crate) fn quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, n)| *n);
            (*le, (n - was).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in delta {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let share = if count > below {
                (rank - below) / (count - below)
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// One reading of what the charts show.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    at: Instant,
    accepted: f64,
    delivered: f64,
    failed: f64,
    /// `anika_delivery_latency_seconds`: from the event's acceptance to its delivery.
    latency: Vec<(f64, f64)>,
    /// Events not yet published from the outbox plus messages waiting in subscription queues.
    backlog: f64,
}

impl Sample {
    fn read(text: &str, at: Instant) -> Self {
        let sum = |metric, label| metric_sum(text, metric, label) as f64;
        Self {
            at,
            accepted: sum("anika_events_accepted_total", None),
            delivered: sum("anika_deliveries_total", Some("outcome=\"delivered\"")),
            failed: sum("anika_deliveries_total", Some("outcome=\"failed\"")),
            latency: histogram_buckets(text, "anika_delivery_latency_seconds"),
            backlog: sum("anika_outbox_backlog", None)
                + sum("anika_subscriptions_queued_messages", None),
        }
    }
}

/// How many readings the charts keep (at one a second at most, polled every 2 s: ~3 minutes).
const KEEP: usize = 90;

/// The overview's recent readings, shared by every operator looking at it.
#[derive(Debug, Default)]
pub(crate) struct Samples(Mutex<VecDeque<Sample>>);

impl Samples {
    /// Keeps `sample` unless the last one is under a second old; the readings so far.
    fn record(&self, sample: Sample) -> Vec<Sample> {
        let mut kept = self.0.lock().expect("samples lock");
        let fresh = kept
            .back()
            .is_none_or(|last| sample.at.duration_since(last.at) >= Duration::from_secs(1));
        if fresh {
            kept.push_back(sample);
            while kept.len() > KEEP {
                kept.pop_front();
            }
        }
        kept.iter().cloned().collect()
    }
}

/// One chart's series, a value per interval between readings (`None`: nothing to show).
struct Series<'a> {
    name: &'a str,
    class: &'a str,
    points: Vec<Option<f64>>,
}

/// What happened between consecutive readings: rates per second, latency quantiles in ms.
struct Intervals {
    accepted: Vec<Option<f64>>,
    delivered: Vec<Option<f64>>,
    failed: Vec<Option<f64>>,
    p50: Vec<Option<f64>>,
    p99: Vec<Option<f64>>,
    backlog: Vec<Option<f64>>,
}

fn intervals(samples: &[Sample]) -> Intervals {
    let mut out = Intervals {
        accepted: vec![],
        delivered: vec![],
        failed: vec![],
        p50: vec![],
        p99: vec![],
        backlog: vec![],
    };
    for pair in samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let secs = b.at.duration_since(a.at).as_secs_f64().max(0.001);
        // A restarted server starts its counters again: no negative rates.
        let rate = |x: f64, y: f64| Some((y - x).max(0.0) / secs);
        out.accepted.push(rate(a.accepted, b.accepted));
        out.delivered.push(rate(a.delivered, b.delivered));
        out.failed.push(rate(a.failed, b.failed));
        out.p50
            .push(quantile(0.5, &a.latency, &b.latency).map(|s| s * 1000.0));
        out.p99
            .push(quantile(0.99, &a.latency, &b.latency).map(|s| s * 1000.0));
        out.backlog.push(Some(b.backlog));
    }
    out
}

/// A number for a chart's label: whole above 10, one decimal below.
fn figure(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A small line chart as inline SVG, with its latest value in words (for people and
/// screen readers alike).
fn chart(id: &str, title: &str, unit: &str, series: &[Series<'_>]) -> Markup {
    const W: f64 = 300.0;
    const H: f64 = 60.0;
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().flatten())
        .fold(0.0f64, |m, v| m.max(*v))
        .max(1.0);
    let steps = (KEEP - 1) as f64;
    let line = |points: &[Option<f64>]| -> String {
        // Right-aligned: the newest interval at the right edge, as the chart fills up.
        let offset = (KEEP - 1).saturating_sub(points.len());
        points
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.map(|v| {
                    let x = (offset + i) as f64 / steps * W;
                    let y = H - v / top * (H - 4.0) - 2.0;
                    format!("{x:.1},{y:.1}")
                })
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let latest: Vec<String> = series
        .iter()
        .map(|s| match s.points.iter().rev().flatten().next() {
            Some(v) => format!("{} {} {unit}", s.name, figure(*v)),
            None => format!("{} —", s.name),
        })
        .collect();
    let words = latest.join(", ");
    html! {
        figure.chart-tile {
            figcaption { strong { (title) } br; span.latest { (words) } }
            svg.chart #(id) viewBox="0 0 300 60" preserveAspectRatio="none" role="img"
                aria-label={ (title) ", the last few minutes; now " (words) } {
                line.axis x1="0" y1="59" x2="300" y2="59" {}
                @for s in series {
                    polyline class=(s.class) points=(line(&s.points)) {}
                }
            }
        }
    }
}

fn charts(samples: &[Sample]) -> Markup {
    if samples.len() < 2 {
        return html! { p.hint #charts-pending { "The charts start with the next reading (every 2 s while this page is open)." } };
    }
    let i = intervals(samples);
    let one = |name, class, points| Series {
        name,
        class,
        points,
    };
    html! {
        div.charts {
            (chart("chart-accepted", "Events accepted", "/s", &[one("accepted", "line", i.accepted)]))
            (chart("chart-delivered", "Deliveries", "/s", &[one("succeeded", "line", i.delivered)]))
            (chart("chart-failed", "Failed attempts", "/s", &[one("failed", "line bad", i.failed)]))
            (chart("chart-latency", "End-to-end latency", "ms", &[one("p50", "line", i.p50), one("p99", "line second", i.p99)]))
            (chart("chart-backlog", "Backlog (outbox and queues)", "messages", &[one("backlog", "line", i.backlog)]))
        }
    }
}

/// GET /console
pub async fn page(c: Console) -> PageResult {
    let live = live_markup(&c).await;
    Ok(c.page(
        "Overview",
        html! {
            div #live hx-get="/console/overview/live" hx-trigger="every 2s" hx-swap="innerHTML" aria-live="polite" {
                (live)
            }
        },
    ))
}

/// GET /console/overview/live: the fragment htmx swaps in.
pub async fn live(c: Console) -> impl IntoResponse {
    Html(live_markup(&c).await.into_string())
}

async fn live_markup(c: &Console) -> Markup {
    let counters = if c.session.who.role == Role::Operator {
        c.state.api.text("/metrics").await.ok()
    } else {
        None
    };
    let subs = c.get("/v1/subscriptions?limit=1000").await.ok();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(subs) = &subs {
        for sub in items(subs) {
            *by_status.entry(s(sub, "status").to_owned()).or_default() += 1;
        }
    }
    let samples = counters
        .as_deref()
        .map(|text| c.state.samples.record(Sample::read(text, Instant::now())));
    html! {
        @if let Some(samples) = &samples {
            h2 { "The last few minutes" }
            (charts(samples))
        }
        @if let Some(text) = &counters {
            h2 { "This server since it started" }
            div.tiles {
                div.tile { span.value #accepted { (metric_sum(text, "anika_events_accepted_total", None)) } span.label { "events accepted" } }
                div.tile { span.value #delivered { (metric_sum(text, "anika_deliveries_total", Some("outcome=\"delivered\""))) } span.label { "deliveries succeeded" } }
                div.tile { span.value #failed { (metric_sum(text, "anika_deliveries_total", Some("outcome=\"failed\""))) } span.label { "attempts failed" } }
            }
        }
        h2 { "Subscriptions" }
        @match &subs {
            None => p { "The subscriptions could not be read (a publisher key sees none)." },
            Some(_) if by_status.is_empty() => p { "No subscriptions yet. " a href="/console/subscriptions/new" { "Create one" } },
            Some(_) => div.tiles {
                @for (status, n) in &by_status {
                    div.tile { span.value { (n) } span.label { (badge(status)) } }
                }
            },
        }
        p.hint { "Updates every 2 seconds. " a href="/console/subscriptions" { "All subscriptions, worst first" } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_across_their_labels() {
        let text = "# TYPE anika_deliveries_total counter\n\
            anika_deliveries_total{outcome=\"delivered\"} 7\n\
            anika_deliveries_total{outcome=\"failed\"} 2\n\
            anika_deliveries_total{outcome=\"delivered\",x=\"y\"} 1\n\
            anika_events_accepted_total 12\n";
        assert_eq!(metric_sum(text, "anika_events_accepted_total", None), 12);
        assert_eq!(
            metric_sum(
                text,
                "anika_deliveries_total",
                Some("outcome=\"delivered\"")
            ),
            8
        );
        assert_eq!(metric_sum(text, "anika_missing", None), 0);
    }

    #[test]
    fn latency_quantiles_come_from_the_buckets_filled_between_two_readings() {
        let before =
            "x_bucket{le=\"0.01\"} 10\nx_bucket{le=\"0.1\"} 10\nx_bucket{le=\"+Inf\"} 10\n";
        // 100 more observations: 50 under 10 ms, 49 between 10 and 100 ms, 1 above.
        let after =
            "x_bucket{le=\"0.01\"} 60\nx_bucket{le=\"0.1\"} 109\nx_bucket{le=\"+Inf\"} 110\n";
        let (a, b) = (
            histogram_buckets(before, "x"),
            histogram_buckets(after, "x"),
        );
        assert_eq!(b.len(), 3);
        let p50 = quantile(0.5, &a, &b).unwrap();
        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
        let p99 = quantile(0.99, &a, &b).unwrap();
        assert!((p99 - 0.1).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(0.5, &b, &b), None, "nothing observed in between");
    }

    #[test]
    fn a_chart_draws_one_point_per_interval_and_says_its_latest_value() {
        let at = Instant::now();
        let reading = |secs: u64, accepted: f64| Sample {
            at: at + Duration::from_secs(secs),
            accepted,
            delivered: 0.0,
            failed: 0.0,
            latency: vec![],
            backlog: 3.0,
        };
        let samples = [reading(0, 0.0), reading(2, 10.0), reading(4, 30.0)];
        let html = charts(&samples).into_string();
        assert!(html.contains("accepted 10 /s"), "{html}");
        assert!(!html.contains("style="), "no inline style under the CSP");
        let i = intervals(&samples);
        assert_eq!(i.accepted, [Some(5.0), Some(10.0)]);
        assert_eq!(i.backlog, [Some(3.0), Some(3.0)]);
    }
}
