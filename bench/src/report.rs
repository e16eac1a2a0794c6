//! Figures of a run, medians over runs, ratios to the ceilings, targets; as a table or JSON.

#![allow(clippy::print_stdout)] // the report is what `anika bench` prints

use std::time::Duration;

use serde::Serialize;

/// One figure of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// Scenario and phase, e.g. `latency@1000/s`.
    pub scenario: String,
    /// What was measured, e.g. `e2e_p99_ms`.
    pub metric: String,
    /// The value.
    pub value: f64,
}

/// The delivery check of one phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Check {
    /// Scenario and phase.
    pub scenario: String,
    /// Events answered 202.
    pub accepted: u64,
    /// Deliveries expected: accepted × subscriptions.
    pub expected: u64,
    /// Distinct (subscription, event) pairs delivered.
    pub delivered: u64,
    /// Expected deliveries that never came (after the drain wait).
    pub lost: u64,
    /// Deliveries beyond the first of a pair (same webhook-id again).
    pub duplicates: u64,
    /// Deliveries of events the bench has no 202 for (e.g. a request that timed out after commit).
    pub unexpected: u64,
    /// Requests not answered 202.
    pub failed_requests: u64,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Run {
    /// The figures, in the order measured.
    pub figures: Vec<Figure>,
    /// One delivery check per phase.
    pub checks: Vec<Check>,
    /// Free-form remarks (failure reasons, skipped parts).
    pub notes: Vec<String>,
}

impl Run {
    /// Adds a figure.
    pub fn add(&mut self, scenario: &str, metric: &str, value: f64) {
        if value.is_finite() {
            self.figures.push(Figure {
                scenario: scenario.to_owned(),
                metric: metric.to_owned(),
                value,
            });
        }
    }

    /// A figure of this run.
    pub fn get(&self, scenario: &str, metric: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.scenario == scenario && f.metric == metric)
            .map(|f| f.value)
    }

    /// Adds `numerator / denominator` as a ratio figure when both were measured.
    pub fn ratio(&mut self, name: &str, numerator: (&str, &str), denominator: (&str, &str)) {
        if let (Some(n), Some(d)) = (
            self.get(numerator.0, numerator.1),
            self.get(denominator.0, denominator.1),
        ) && d > 0.0
        {
            self.add("ratio", name, n / d);
        }
    }

    /// Events lost in this run.
    pub fn lost(&self) -> u64 {
        self.checks.iter().map(|c| c.lost).sum()
    }
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; `None` for an empty set.
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1e3
        };
        Some(Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

/// The median of some values (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A figure over all runs.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Scenario and phase.
    pub scenario: String,
    /// The metric.
    pub metric: String,
    /// Median over runs.
    pub median: f64,
    /// Every run's value.
    pub runs: Vec<f64>,
}

/// A target of the issues, checked against a median.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// What the target says.
    pub target: &'static str,
    /// The median measured (absent if that scenario did not run).
    pub measured: Option<f64>,
    /// The bound.
    pub bound: f64,
    /// Whether larger is better (a rate) or smaller (a latency).
    pub at_least: bool,
    /// Whether the median meets the bound.
    pub met: Option<bool>,
}

/// The targets: (text, scenario, metric, bound, at least?).
const TARGETS: &[(&str, &str, &str, f64, bool)] = &[
    (
        "ingest >= 5,000 single events/s (64 clients)",
        "throughput",
        "accepted_per_s",
        5000.0,
        true,
    ),
    (
        "ingest p99 <= 20 ms at 1,000 events/s",
        "latency@1000/s",
        "ingest_p99_ms",
        20.0,
        false,
    ),
    (
        "batch ingest >= 30,000 events/s (batches of 100)",
        "batch",
        "accepted_per_s",
        30000.0,
        true,
    ),
    (
        "end-to-end p99 <= 25 ms at 1,000 events/s",
        "latency@1000/s",
        "e2e_p99_ms",
        25.0,
        false,
    ),
    (
        ">= 5,000 delivered/s, one subscription (dispatcher alone, backlog)",
        "ingest",
        "backlog_delivered_per_s",
        5000.0,
        true,
    ),
    (
        ">= 5,000 delivered/s, one subscription, while ingest shares the cores",
        "throughput",
        "delivered_per_s",
        5000.0,
        true,
    ),
    (
        ">= 10,000 deliveries/s, 50-way fan-out",
        "fanout",
        "deliveries_per_s",
        10000.0,
        true,
    ),
    (
        "ingest (alone) >= 50 % of the RabbitMQ confirmed-publish ceiling",
        "ratio",
        "ingest_alone/rabbitmq_publish",
        0.5,
        true,
    ),
    (
        "overload (2x capacity offered): accepted >= 90 % of capacity",
        "overload",
        "accepted_of_capacity",
        0.9,
        true,
    ),
    (
        "overload: p99 of accepted events <= 100 ms",
        "overload",
        "accepted_p99_ms",
        100.0,
        false,
    ),
    (
        "overload: every refusal a 429/503 with Retry-After",
        "overload",
        "bad_refusals",
        0.0,
        false,
    ),
    (
        "soak: RSS growth after warm-up <= 10 %",
        "soak",
        "rss_growth_pct",
        10.0,
        false,
    ),
];

/// All runs, their medians and the targets.
#[derive(Debug, Serialize)]
pub struct Report {
    /// What was benchmarked and how.
    pub setup: serde_json::Value,
    /// Each run as measured.
    pub runs: Vec<Run>,
    /// Medians over the runs.
    pub medians: Vec<Summary>,
    /// The targets against the medians.
    pub targets: Vec<Target>,
    /// Events lost over all runs.
    pub lost: u64,
    /// Duplicate deliveries over all runs.
    pub duplicates: u64,
}

impl Report {
    /// Computes medians and targets.
    pub fn new(setup: serde_json::Value, runs: Vec<Run>) -> Self {
        let mut medians: Vec<Summary> = Vec::new();
        for run in &runs {
            for figure in &run.figures {
                if medians
                    .iter()
                    .any(|s| s.scenario == figure.scenario && s.metric == figure.metric)
                {
                    continue;
                }
                let mut values: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.get(&figure.scenario, &figure.metric))
                    .collect();
                let all = values.clone();
                medians.push(Summary {
                    scenario: figure.scenario.clone(),
                    metric: figure.metric.clone(),
                    median: median(&mut values),
                    runs: all,
                });
            }
        }
        let targets = TARGETS
            .iter()
            .map(|(text, scenario, metric, bound, at_least)| {
                let measured = medians
                    .iter()
                    .find(|s| s.scenario == *scenario && s.metric == *metric)
                    .map(|s| s.median);
                Target {
                    target: text,
                    measured,
                    bound: *bound,
                    at_least: *at_least,
                    met: measured.map(|m| if *at_least { m >= *bound } else { m <= *bound }),
                }
            })
            .collect();
        let lost = runs.iter().map(Run::lost).sum();
        let duplicates = runs
            .iter()
            .flat_map(|r| &r.checks)
            .map(|c| c.duplicates)
            .sum();
        Self {
            setup,
            runs,
            medians,
            targets,
            lost,
            duplicates,
        }
    }

    /// Prints the report as JSON.
    pub fn print_json(&self) -> Result<(), serde_json::Error> {
        println!("{}", serde_json::to_string_pretty(self)?);
        Ok(())
    }

    /// Prints the report as tables.
    pub fn print_table(&self) {
        let runs = self.runs.len();
        println!(
            "anika bench: {} run{}, median{} shown{}",
            runs,
            if runs == 1 { "" } else { "s" },
            if runs == 1 { "" } else { "s" },
            if runs > 1 {
                " (each run's value after it)"
            } else {
                ""
            }
        );
        if let Some(setup) = self.setup.as_object() {
            for (k, v) in setup {
                println!(
                    "  {k:<18} {}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                );
            }
        }
        println!();
        let width = self
            .medians
            .iter()
            .map(|s| s.scenario.len())
            .max()
            .unwrap_or(8)
            .max(8);
        let metric_width = self
            .medians
            .iter()
            .map(|s| s.metric.len())
            .max()
            .unwrap_or(6)
            .max(6);
        println!(
            "{:<width$}  {:<metric_width$}  {:>12}  RUNS",
            "SCENARIO", "METRIC", "MEDIAN"
        );
        for s in &self.medians {
            let each = if runs > 1 {
                s.runs
                    .iter()
                    .map(|v| format_value(*v))
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                String::new()
            };
            println!(
                "{:<width$}  {:<metric_width$}  {:>12}  {each}",
                s.scenario,
                s.metric,
                format_value(s.median)
            );
        }
        println!();
        println!("TARGETS (on the medians)");
        for t in &self.targets {
            let verdict = match (t.measured, t.met) {
                (Some(m), Some(true)) => format!("{:>12}  met", format_value(m)),
                (Some(m), Some(false)) => {
                    let off = if t.at_least {
                        (t.bound - m) / t.bound * 100.0
                    } else {
                        (m - t.bound) / t.bound * 100.0
                    };
                    format!("{:>12}  MISSED by {off:.0} %", format_value(m))
                }
                _ => format!("{:>12}  not measured", "-"),
            };
            println!("  {:<58} {verdict}", t.target);
        }
        println!();
        println!("DELIVERY CHECK (every id answered 202 must be delivered to every subscription)");
        for (i, run) in self.runs.iter().enumerate() {
            for c in &run.checks {
                println!(
                    "  run {} {:<20} accepted {:>8}  delivered {:>9}/{:<9} lost {:>5}  duplicates {:>5}  unexpected {:>3}  failed requests {}",
                    i + 1,
                    c.scenario,
                    c.accepted,
                    c.delivered,
                    c.expected,
                    c.lost,
                    c.duplicates,
                    c.unexpected,
                    c.failed_requests
                );
            }
            for note in &run.notes {
                println!("  run {} note: {note}", i + 1);
            }
        }
        println!(
            "  total: lost {}, duplicates {}{}",
            self.lost,
            self.duplicates,
            if self.lost == 0 {
                ""
            } else {
                "  <-- EVENTS LOST"
            }
        );
    }
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "-".to_owned()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}
