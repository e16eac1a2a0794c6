//! The scenarios: each wires its own partner, topic and subscriptions, drives load,
//! waits for the deliveries, checks that nothing was lost, and adds its figures to the run.

use std::{
    collections::{HashMap, HashSet},
    io::IsTerminal,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anika_shared::config::QueueType;
use lapin::{options::QueueDeclareOptions, types::FieldTable};

use super::{
    BenchArgs,
    api::{Api, Credential, Fixture},
    ceiling,
    load::{self, Load, Poster, Sent, Until},
    receiver::{Arrival, Receiver},
    report::{Check, Percentiles, Run},
    server::{Target, cpu_seconds, rss_bytes},
    wire,
};
use crate::CliError;

mod cluster;
mod noisy;
pub use cluster::{SINGLE as CLUSTER_SINGLE, SPLIT as CLUSTER_SPLIT, ratio as cluster_ratio};
pub use noisy::ratio as noisy_ratio;

/// The drain gives up when no delivery arrived for this long.
const STALL: Duration = Duration::from_secs(20);

/// The closed loop that warms a fresh server up before the overload scenario measures it.
const OVERLOAD_WARM_UP: Duration = Duration::from_secs(3);

/// What every scenario works with.
pub struct Bench<'a> {
    /// The options.
    pub args: &'a BenchArgs,
    /// The system under test.
    pub target: &'a Target,
    /// The API client.
    pub api: Api,
    /// The operator's credential.
    pub operator: Arc<Credential>,
    /// The webhook receiver.
    pub receiver: Receiver,
    /// The next free receiver path index.
    pub next_index: u32,
    /// The queue type subscriptions use.
    pub queue_type: QueueType,
}

/// A progress bar on a terminal (stderr), a line per phase otherwise.
struct Phase {
    bar: Option<indicatif::ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    label: String,
    started: Instant,
}

impl Phase {
    fn start(label: String, total: u64, count: impl Fn() -> u64 + Send + 'static) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            // Without a known total (closed loops, ceilings) a bar would only sit full.
            let template = if total > 0 {
                "{spinner} {msg:<28} [{bar:30}] {pos}/{len} {per_sec} {elapsed}"
            } else {
                "{spinner} {msg:<28} {pos} {elapsed}"
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(template)
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_message(label.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            eprintln!("{label} …");
        }
        // Reading a counter from a ticker keeps the bar's lock off the request path.
        let ticker = bar.clone().map(|bar| {
            tokio::spawn(async move {
                loop {
                    bar.set_position(count());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        });
        Self {
            bar,
            ticker,
            label,
            started: Instant::now(),
        }
    }

    fn finish(self, summary: &str) {
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!(
                "{} done in {:.1} s: {summary}",
                self.label,
                self.started.elapsed().as_secs_f64()
            ),
        }
    }
}

/// Deliveries matched against the 202s.
struct Matched {
    check: Check,
    /// POST sent → webhook received, first delivery of each (subscription, event).
    e2e: Vec<Duration>,
    last_arrival: Option<Instant>,
}

/// The histogram buckets of a `/metrics` text: (metric, upper bound) -> count, summed over
/// label sets.
fn buckets(metrics: &str) -> HashMap<(String, String), f64> {
    let mut buckets = HashMap::new();
    for line in metrics.lines() {
        let Some((name, rest)) = line.split_once("_bucket{") else {
            continue;
        };
        let Some((labels, count)) = rest.rsplit_once("} ") else {
            continue;
        };
        let le = labels
            .split(',')
            .find_map(|l| l.strip_prefix("le=\"").and_then(|v| v.strip_suffix('"')));
        if let (Some(le), Ok(count)) = (le, count.trim().parse::<f64>()) {
            *buckets.entry((name.to_owned(), le.to_owned())).or_default() += count;
        }
    }
    buckets
}

/// The edge's refusal counters of a `/metrics` text (which bound did the shedding).
fn edge_refusals(metrics: &str) -> String {
    let counts: Vec<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("anika_http_requests_refused_total"))
        .collect();
    if counts.is_empty() {
        "none".to_owned()
    } else {
        counts.join(", ")
    }
}

/// The upper bound (ms) of the bucket holding `quantile` of what `metric` recorded between
/// two [`buckets`] snapshots.
fn bucket_quantile(
    before: &HashMap<(String, String), f64>,
    after: &HashMap<(String, String), f64>,
    metric: &str,
    quantile: f64,
) -> Option<f64> {
    let mut bounds: Vec<(f64, f64)> = after
        .iter()
        .filter(|((name, _), _)| name == metric)
        .filter_map(|((name, le), count)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let earlier = before
                .get(&(name.clone(), le.clone()))
                .copied()
                .unwrap_or(0.0);
            Some((bound, count - earlier))
        })
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = bounds.last()?.1;
    if total <= 0.0 {
        return None;
    }
    bounds
        .iter()
        .find(|(_, count)| *count >= quantile * total)
        .map(|(bound, _)| bound * 1000.0)
}

fn ingest_latencies(accepted: &[Sent]) -> Vec<Duration> {
    accepted.iter().map(|s| s.acked - s.sent).collect()
}

/// The accepted events of each second of a phase (by when they were sent), as `count / p99 ms`:
/// whether a tail came from the whole phase or from the seconds the server took to react.
fn by_second(accepted: &[Sent]) -> String {
    let Some(start) = first_sent(accepted) else {
        return String::new();
    };
    let mut seconds: Vec<Vec<Duration>> = Vec::new();
    for s in accepted {
        let second = (s.sent - start).as_secs() as usize;
        if seconds.len() <= second {
            seconds.resize_with(second + 1, Vec::new);
        }
        seconds[second].push(s.acked - s.sent);
    }
    seconds
        .into_iter()
        .map(|latencies| {
            let n = latencies.len();
            Percentiles::of(latencies)
                .map_or_else(|| "0".to_owned(), |p| format!("{n} / {:.0}", p.p99))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn first_sent(accepted: &[Sent]) -> Option<Instant> {
    accepted.iter().map(|s| s.sent).min()
}

impl Bench<'_> {
    async fn fixture(&mut self, label: &str, subscriptions: usize) -> Result<Fixture, CliError> {
        Fixture::create(
            &self.api,
            &self.operator,
            &self.receiver,
            &mut self.next_index,
            label,
            subscriptions,
        )
        .await
    }

    /// CPU seconds the server child used so far (`None` for a server the bench did not start).
    fn server_cpu(&self) -> Option<f64> {
        self.target.pid().and_then(cpu_seconds)
    }

    /// Server CPU per unit of work between `before` and now, in microseconds.
    fn add_cpu(
        &self,
        run: &mut Run,
        scenario: &str,
        metric: &str,
        before: Option<f64>,
        units: u64,
    ) {
        if let (Some(before), Some(after)) = (before, self.server_cpu())
            && units > 0
        {
            run.add(scenario, metric, (after - before) * 1e6 / units as f64);
        }
    }

    fn poster(&self, fixture: &Fixture) -> Poster {
        Poster::new(
            &self.api,
            fixture.topic,
            Arc::clone(&fixture.publisher),
            self.args.payload_bytes,
        )
    }

    /// Waits until every accepted event reached every subscription (or the drain times out),
    /// then matches the arrivals with the 202s.
    async fn drain(
        &self,
        scenario: &str,
        fixture: &Fixture,
        load: &Load,
        baseline: u64,
    ) -> Matched {
        let subs = fixture.indexes();
        let expected = (load.accepted.len() * subs.len()) as u64;
        let receiver = self.receiver.clone();
        let phase = Phase::start(format!("{scenario}: deliveries"), expected, move || {
            receiver.count().saturating_sub(baseline)
        });
        let deadline = Instant::now() + self.args.drain_timeout;
        let mut arrivals: Vec<Arrival> = Vec::new();
        let (mut last_count, mut last_change) = (0, Instant::now());
        let matched = loop {
            let got = self.receiver.count().saturating_sub(baseline);
            if got != last_count {
                (last_count, last_change) = (got, Instant::now());
            }
            let timed_out = Instant::now() >= deadline || last_change.elapsed() >= STALL;
            if got >= expected || timed_out {
                arrivals.extend(self.receiver.take(&subs));
                arrivals.sort_unstable_by_key(|a| a.at);
                let matched = match_deliveries(scenario, &load.accepted, &arrivals, &subs);
                // Duplicates can make the count reach the goal before every pair arrived.
                if matched.check.lost == 0 || timed_out {
                    break matched;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut matched = matched;
        matched.check.failed_requests = load.failed();
        phase.finish(&format!(
            "{} of {} delivered, {} lost",
            matched.check.delivered, matched.check.expected, matched.check.lost
        ));
        matched
    }

    fn record_load(&self, run: &mut Run, scenario: &str, load: &Load) {
        if load.failed() > 0 {
            run.notes.push(format!(
                "{scenario}: requests not accepted: {:?}",
                load.failures
            ));
        }
        if let Some(p) = Percentiles::of(ingest_latencies(&load.accepted)) {
            run.add(scenario, "ingest_p50_ms", p.p50);
            run.add(scenario, "ingest_p99_ms", p.p99);
        }
    }

    fn record_e2e(run: &mut Run, scenario: &str, matched: &Matched, detailed: bool) {
        if let Some(p) = Percentiles::of(matched.e2e.clone()) {
            run.add(scenario, "e2e_p50_ms", p.p50);
            if detailed {
                run.add(scenario, "e2e_p90_ms", p.p90);
            }
            run.add(scenario, "e2e_p99_ms", p.p99);
            if detailed {
                run.add(scenario, "e2e_max_ms", p.max);
            }
        }
    }

    /// Open-loop fixed rates: ingest and end-to-end latency percentiles.
    pub async fn latency(&mut self, run: &mut Run) -> Result<(), CliError> {
        let fixture = self.fixture("latency", 1).await?;
        let poster = self.poster(&fixture);
        // Warm-up (not reported): connection pools, token and topic caches, the consumer.
        let baseline = self.receiver.count();
        let warm = load::closed_loop(&poster, 8, 1, Until::Accepted(500)).await;
        let matched = self
            .drain("latency warm-up", &fixture, &warm, baseline)
            .await;
        run.checks.push(matched.check);
        for &rate in &self.args.rates {
            let scenario = format!("latency@{rate}/s");
            let baseline = self.receiver.count();
            let cpu = self.server_cpu();
            poster.progress.store(0, Ordering::Relaxed);
            let counter = Arc::clone(&poster.progress);
            let total = (f64::from(rate) * self.args.duration.as_secs_f64()) as u64;
            let phase = Phase::start(format!("{scenario}: posting"), total, move || {
                counter.load(Ordering::Relaxed)
            });
            let load = load::open_loop(&poster, rate, self.args.duration).await;
            phase.finish(&format!("{} accepted", load.accepted.len()));
            let matched = self.drain(&scenario, &fixture, &load, baseline).await;
            run.add(
                &scenario,
                "achieved_per_s",
                load.accepted.len() as f64 / load.elapsed.as_secs_f64(),
            );
            self.record_load(run, &scenario, &load);
            Self::record_e2e(run, &scenario, &matched, true);
            self.add_cpu(
                run,
                &scenario,
                "server_cpu_us_per_event",
                cpu,
                matched.check.delivered,
            );
            run.checks.push(matched.check);
        }
        fixture.delete(&self.api).await
    }

    /// Closed loop, single events, one subscription: accepted/s and delivered/s.
    pub async fn throughput(&mut self, run: &mut Run) -> Result<(), CliError> {
        let scenario = "throughput";
        let fixture = self.fixture(scenario, 1).await?;
        let poster = self.poster(&fixture);
        let cpu = self.server_cpu();
        let (load, matched) = self.saturate(scenario, &fixture, &poster).await;
        self.record_saturated(run, scenario, &load, &matched);
        self.add_cpu(
            run,
            scenario,
            "server_cpu_us_per_event",
            cpu,
            matched.check.delivered,
        );
        run.checks.push(matched.check);
        fixture.delete(&self.api).await
    }

    /// The saturating closed loop of `throughput` and `cluster`: `--concurrency` clients
    /// posting single events for `--duration`, then the drain of their deliveries.
    async fn saturate(
        &self,
        scenario: &str,
        fixture: &Fixture,
        poster: &Poster,
    ) -> (Load, Matched) {
        let baseline = self.receiver.count();
        poster.progress.store(0, Ordering::Relaxed);
        let counter = Arc::clone(&poster.progress);
        let phase = Phase::start(
            format!("{scenario}: {} clients", self.args.concurrency),
            0,
            move || counter.load(Ordering::Relaxed),
        );
        let load = load::closed_loop(
            poster,
            self.args.concurrency,
            1,
            Until::Elapsed(self.args.duration),
        )
        .await;
        phase.finish(&format!("{} accepted", load.accepted.len()));
        let matched = self.drain(scenario, fixture, &load, baseline).await;
        (load, matched)
    }

    /// What a saturating closed loop achieved: accepted/s, delivered/s (first POST to last
    /// delivery), and its ingest and end-to-end percentiles.
    fn record_saturated(&self, run: &mut Run, scenario: &str, load: &Load, matched: &Matched) {
        run.add(
            scenario,
            "accepted_per_s",
            load.accepted.len() as f64 / load.elapsed.as_secs_f64(),
        );
        if let (Some(first), Some(last)) = (first_sent(&load.accepted), matched.last_arrival) {
            run.add(
                scenario,
                "delivered_per_s",
                matched.check.delivered as f64 / (last - first).as_secs_f64(),
            );
        }
        self.record_load(run, scenario, load);
        Self::record_e2e(run, scenario, matched, false);
    }

    /// One topic, many subscriptions, events at a fixed rate: deliveries/s.
    pub async fn fanout(&mut self, run: &mut Run) -> Result<(), CliError> {
        let scenario = "fanout";
        let fixture = self.fixture(scenario, self.args.subscriptions).await?;
        let poster = self.poster(&fixture);
        let baseline = self.receiver.count();
        let cpu = self.server_cpu();
        let rate = self.args.fanout_rate;
        let counter = Arc::clone(&poster.progress);
        let total = (f64::from(rate) * self.args.duration.as_secs_f64()) as u64;
        let phase = Phase::start(
            format!("{scenario}: {rate}/s × {}", self.args.subscriptions),
            total,
            move || counter.load(Ordering::Relaxed),
        );
        let load = load::open_loop(&poster, rate, self.args.duration).await;
        phase.finish(&format!("{} accepted", load.accepted.len()));
        let matched = self.drain(scenario, &fixture, &load, baseline).await;
        run.add(
            scenario,
            "offered_per_s",
            load.accepted.len() as f64 * fixture.subs.len() as f64 / load.elapsed.as_secs_f64(),
        );
        if let (Some(first), Some(last)) = (first_sent(&load.accepted), matched.last_arrival) {
            run.add(
                scenario,
                "deliveries_per_s",
                matched.check.delivered as f64 / (last - first).as_secs_f64(),
            );
        }
        Self::record_e2e(run, scenario, &matched, false);
        self.add_cpu(
            run,
            scenario,
            "server_cpu_us_per_delivery",
            cpu,
            matched.check.delivered,
        );
        run.checks.push(matched.check);
        fixture.delete(&self.api).await
    }

    /// Single-event POSTs into a paused subscription: ingest alone, as the
    /// RabbitMQ ceiling publishes alone into a queue nobody consumes.
    pub async fn ingest(&mut self, run: &mut Run) -> Result<(), CliError> {
        let clients = self.args.concurrency;
        self.ingest_alone(run, "ingest", clients, 1).await
    }

    /// Batches into a paused subscription (ingest alone), then the backlog drained.
    pub async fn batch(&mut self, run: &mut Run) -> Result<(), CliError> {
        let (clients, size) = (self.args.batch_concurrency, self.args.batch_size);
        self.ingest_alone(run, "batch", clients, size).await
    }

    /// Posts from `clients` closed-loop clients (`per_request` events each time)
    /// while the only subscription is paused, so the server does nothing but
    /// ingest; then resumes it and checks that every accepted event is delivered.
    async fn ingest_alone(
        &mut self,
        run: &mut Run,
        scenario: &str,
        clients: usize,
        per_request: usize,
    ) -> Result<(), CliError> {
        let fixture = self.fixture(scenario, 1).await?;
        fixture.set_active(&self.api, false).await?;
        // The consumer stops within a second of the pause.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let poster = self.poster(&fixture);
        let baseline = self.receiver.count();
        let cpu = self.server_cpu();
        let counter = Arc::clone(&poster.progress);
        let label = if per_request == 1 {
            format!("{scenario}: {clients} clients, subscription paused")
        } else {
            format!("{scenario}: {clients} × {per_request} events, subscription paused")
        };
        let phase = Phase::start(label, 0, move || counter.load(Ordering::Relaxed));
        let load = load::closed_loop(
            &poster,
            clients,
            per_request,
            Until::Elapsed(self.args.duration),
        )
        .await;
        phase.finish(&format!("{} accepted", load.accepted.len()));
        run.add(
            scenario,
            "accepted_per_s",
            load.accepted.len() as f64 / load.elapsed.as_secs_f64(),
        );
        self.record_load(run, scenario, &load);
        // Ingest alone: the subscription is paused, nothing is delivered yet.
        self.add_cpu(
            run,
            scenario,
            "server_cpu_us_per_event",
            cpu,
            load.accepted.len() as u64,
        );
        let resumed = Instant::now();
        fixture.set_active(&self.api, true).await?;
        let matched = self.drain(scenario, &fixture, &load, baseline).await;
        if let Some(last) = matched.last_arrival {
            run.add(
                scenario,
                "backlog_delivered_per_s",
                matched.check.delivered as f64 / (last - resumed).as_secs_f64(),
            );
        }
        run.checks.push(matched.check);
        fixture.delete(&self.api).await
    }

    /// Single events offered (open loop) for `--overload-duration` at twice the capacity just
    /// measured (closed loop), all through the lean client of [`wire`]; the capacity is measured
    /// again afterwards, and the mean of the two is the one the figures compare with:
    /// the share of capacity still accepted, the latency of what was accepted, that every
    /// refusal was a 429/503 with `Retry-After` (said before anything was stored), and that
    /// every 202 was delivered.
    pub async fn overload(&mut self, run: &mut Run) -> Result<(), CliError> {
        let scenario = "overload";
        let fixture = self.fixture(scenario, 1).await?;
        let poster = self.poster(&fixture);

        // Unmeasured: the first seconds of a fresh server (pools filling, PostgreSQL and
        // RabbitMQ warming) would lower the capacity, and twice it would not be twice.
        self.capacity("overload warm-up", &fixture, &poster, run, OVERLOAD_WARM_UP)
            .await?;
        let before = self
            .capacity(scenario, &fixture, &poster, run, self.args.duration)
            .await?;
        let offered = (2.0 * before).round() as u32;
        let baseline = self.receiver.count();
        poster.progress.store(0, Ordering::Relaxed);
        let counter = Arc::clone(&poster.progress);
        let total = (f64::from(offered) * self.args.overload_duration.as_secs_f64()) as u64;
        let phase = Phase::start(
            format!("{scenario}: {offered}/s offered"),
            total,
            move || counter.load(Ordering::Relaxed),
        );
        // Ingest alone: without the deliveries of the same process competing for the cores.
        let paused = self.args.overload_paused;
        if paused {
            fixture.set_active(&self.api, false).await?;
        }
        let server_before = self.server_metrics().await.unwrap_or_default();
        let load = wire::open_loop(
            &poster,
            offered,
            self.args.overload_duration,
            self.args.overload_connections,
        )
        .await?;
        let server_after = self.server_metrics().await.unwrap_or_default();
        if paused {
            fixture.set_active(&self.api, true).await?;
        }
        phase.finish(&format!(
            "{} accepted, {} refused",
            load.accepted.len(),
            load.failed()
        ));
        let matched = self.drain(scenario, &fixture, &load, baseline).await;
        // Measured again once the overload is drained: the machine's speed drifts (a shared
        // host), and the mean of the two brackets the 30 s between them.
        let after = self
            .capacity(scenario, &fixture, &poster, run, self.args.duration)
            .await?;
        let capacity = (before + after) / 2.0;

        let accepted_per_s = load.accepted.len() as f64 / load.elapsed.as_secs_f64();
        run.add(scenario, "capacity_before_per_s", before);
        run.add(scenario, "capacity_after_per_s", after);
        run.add(scenario, "capacity_per_s", capacity);
        run.add(scenario, "offered_per_s", f64::from(offered));
        run.add(
            scenario,
            "offered_of_capacity",
            f64::from(offered) / capacity,
        );
        // What the client managed to send: below `offered` when every connection was busy.
        run.add(
            scenario,
            "sent_per_s",
            (load.accepted.len() as u64 + load.failed()) as f64 / load.elapsed.as_secs_f64(),
        );
        run.add(scenario, "accepted_per_s", accepted_per_s);
        run.add(scenario, "accepted_of_capacity", accepted_per_s / capacity);
        if let Some(p) = Percentiles::of(ingest_latencies(&load.accepted)) {
            run.add(scenario, "accepted_p50_ms", p.p50);
            run.add(scenario, "accepted_p99_ms", p.p99);
        }
        let told_when = |reason: &str| {
            reason.ends_with(load::WITH_RETRY_AFTER)
                && (reason.starts_with("HTTP 429") || reason.starts_with("HTTP 503"))
        };
        let (refused, bad): (u64, u64) =
            load.failures
                .iter()
                .fold((0, 0), |(refused, bad), (reason, n)| {
                    if told_when(reason) {
                        (refused + n, bad)
                    } else {
                        (refused, bad + n)
                    }
                });
        if let Some(p) = Percentiles::of(load.client_lag.clone()) {
            run.add(scenario, "client_lag_p99_ms", p.p99);
        }
        run.notes.push(format!(
            "{scenario}: accepted by second of the phase, as count / p99 ms: {}",
            by_second(&load.accepted)
        ));
        let (before, after) = (buckets(&server_before), buckets(&server_after));
        for (metric, name) in [
            ("anika_ingest_latency_seconds", "server_ingest"),
            ("anika_ingest_group_commit_seconds", "server_commit"),
            ("anika_ingest_writer_wait_seconds", "server_writer_wait"),
            ("anika_ingest_answer_delay_seconds", "server_answer_delay"),
        ] {
            for (quantile, label) in [(0.5, "p50"), (0.99, "p99")] {
                if let Some(ms) = bucket_quantile(&before, &after, metric, quantile) {
                    run.add(scenario, &format!("{name}_{label}_ms_at_most"), ms);
                }
            }
        }
        run.add(scenario, "refused", refused as f64);
        run.add(scenario, "bad_refusals", bad as f64);
        if load.failed() > 0 {
            run.notes.push(format!(
                "{scenario}: refusals by reason: {:?}",
                load.failures
            ));
        }
        run.notes.push(format!(
            "{scenario}: the server's refusals at the edge so far, by reason: {}",
            edge_refusals(&server_after)
        ));
        run.checks.push(matched.check);
        fixture.delete(&self.api).await
    }

    /// The overload scenario's capacity: the accepted rate of a closed loop of
    /// `--overload-clients` lean clients for `duration`, every event of it delivered.
    async fn capacity(
        &self,
        scenario: &str,
        fixture: &Fixture,
        poster: &Poster,
        run: &mut Run,
        duration: Duration,
    ) -> Result<f64, CliError> {
        let baseline = self.receiver.count();
        poster.progress.store(0, Ordering::Relaxed);
        let counter = Arc::clone(&poster.progress);
        let phase = Phase::start(
            format!(
                "{scenario}: capacity, {} clients",
                self.args.overload_clients
            ),
            0,
            move || counter.load(Ordering::Relaxed),
        );
        // Both phases use the lean client: the same cost per request on the shared cores.
        let measured = wire::closed_loop(poster, self.args.overload_clients, duration).await?;
        let capacity = measured.accepted.len() as f64 / measured.elapsed.as_secs_f64();
        phase.finish(&format!("{capacity:.0} events/s"));
        let matched = self
            .drain(
                &format!("{scenario} capacity"),
                fixture,
                &measured,
                baseline,
            )
            .await;
        run.checks.push(matched.check);
        if capacity < 1.0 {
            return Err(format!("{scenario}: the capacity phase accepted nothing").into());
        }
        Ok(capacity)
    }

    /// The server's `/metrics` text; `None` (and a line on stderr) when it cannot be read.
    async fn server_metrics(&self) -> Option<String> {
        let url = format!("{}/metrics", self.target.base);
        let text = async { self.api.http.get(&url).send().await?.text().await };
        match text.await {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("cannot read {url}: {e}");
                None
            }
        }
    }
    /// The raw ceilings: RabbitMQ confirmed publishes, PostgreSQL inserts, the receiver.
    pub async fn ceiling(&mut self, run: &mut Run) -> Result<(), CliError> {
        let scenario = "ceiling";
        let duration = self.args.ceiling_duration;
        let phase = Phase::start(format!("{scenario}: RabbitMQ publish"), 0, || 0);
        let rabbit = ceiling::rabbitmq(
            &self.target.amqp_url,
            self.queue_type,
            self.args.payload_bytes,
            duration,
        )
        .await?;
        phase.finish(&format!("{rabbit:.0}/s"));
        run.add(scenario, "rabbitmq_publish_per_s", rabbit);

        let phase = Phase::start(format!("{scenario}: PostgreSQL insert"), 0, || 0);
        let pg = ceiling::postgres(
            &self.target.database_url,
            self.args.payload_bytes,
            self.args.batch_size,
            self.args.batch_concurrency,
            duration,
        )
        .await?;
        phase.finish(&format!("{pg:.0} rows/s"));
        run.add(scenario, "postgres_insert_rows_per_s", pg);

        let phase = Phase::start(format!("{scenario}: receiver"), 0, || 0);
        let index = self.next_index;
        self.next_index += 1;
        let receiver = ceiling::receiver(
            &self.api.http,
            &self.receiver,
            index,
            self.args.payload_bytes,
            self.args.concurrency,
            duration,
        )
        .await;
        phase.finish(&format!("{receiver:.0}/s"));
        run.add(scenario, "receiver_requests_per_s", receiver);
        Ok(())
    }

    /// A long run: memory of the server must stay flat and nothing may be left queued.
    pub async fn soak(&mut self, run: &mut Run) -> Result<(), CliError> {
        let scenario = "soak";
        let fixture = self.fixture(scenario, 1).await?;
        let poster = self.poster(&fixture);
        let baseline = self.receiver.count();
        let events = self.args.events;
        let samples: Arc<std::sync::Mutex<Vec<(u64, u64)>>> = Arc::default();
        let sampler = self.target.pid().map(|pid| {
            let (samples, counter) = (Arc::clone(&samples), Arc::clone(&poster.progress));
            tokio::spawn(async move {
                loop {
                    if let Some(rss) = rss_bytes(pid) {
                        let accepted = counter.load(Ordering::Relaxed);
                        samples.lock().expect("samples").push((accepted, rss));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        });
        let counter = Arc::clone(&poster.progress);
        let phase = Phase::start(format!("{scenario}: posting"), events, move || {
            counter.load(Ordering::Relaxed)
        });
        let load =
            load::closed_loop(&poster, self.args.concurrency, 1, Until::Accepted(events)).await;
        phase.finish(&format!("{} accepted", load.accepted.len()));
        let matched = self.drain(scenario, &fixture, &load, baseline).await;
        if let Some(sampler) = sampler {
            sampler.abort();
        }
        run.add(scenario, "events", load.accepted.len() as f64);
        run.add(
            scenario,
            "accepted_per_s",
            load.accepted.len() as f64 / load.elapsed.as_secs_f64(),
        );
        self.record_load(run, scenario, &load);
        // After the drain the pipeline is idle: this is "at the end".
        let end = self.target.pid().and_then(rss_bytes);
        let samples = samples.lock().expect("samples").clone();
        let warm = samples
            .iter()
            .find(|(accepted, _)| *accepted >= events / 10)
            .map(|(_, rss)| *rss);
        let peak = samples.iter().map(|(_, rss)| *rss).max();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        match (warm, end) {
            (Some(warm), Some(end)) => {
                run.add(scenario, "rss_warm_mib", mib(warm));
                run.add(scenario, "rss_end_mib", mib(end));
                run.add(scenario, "rss_peak_mib", mib(peak.unwrap_or(end).max(end)));
                run.add(
                    scenario,
                    "rss_growth_pct",
                    (end as f64 - warm as f64) / warm as f64 * 100.0,
                );
            }
            _ => run.notes.push(
                "soak: RSS not sampled (the server is not a child of the bench, or /proc is missing)"
                    .into(),
            ),
        }
        match self.outbox_backlog().await {
            Ok(n) => run.add(scenario, "outbox_backlog", n as f64),
            Err(e) => run.notes.push(format!("soak: outbox not read: {e}")),
        }
        match self.queue_backlog(&fixture).await {
            Ok(n) => run.add(scenario, "queue_backlog", n as f64),
            Err(e) => run.notes.push(format!("soak: queues not read: {e}")),
        }
        Self::record_e2e(run, scenario, &matched, false);
        run.checks.push(matched.check);
        fixture.delete(&self.api).await
    }

    async fn outbox_backlog(&self) -> Result<i64, CliError> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&anika_shared::db::options(
            &self.target.database_url,
        )?)
        .await?;
        // Confirmed rows are deleted in batches every few milliseconds; give the last batch a moment.
        let mut n = 0;
        for _ in 0..50 {
            n = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&mut conn)
                .await?;
            if n == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = conn.close().await;
        Ok(n)
    }

    async fn queue_backlog(&self, fixture: &Fixture) -> Result<u64, CliError> {
        let conn = lapin::Connection::connect(
            &self.target.amqp_url,
            lapin::ConnectionProperties::default(),
        )
        .await?;
        let mut total = 0u64;
        for sub in &fixture.subs {
            for queue in [
                format!("anika.sub.{}", sub.id),
                format!("anika.dlq.{}", sub.id),
            ] {
                let channel = conn.create_channel().await?;
                let declared = channel
                    .queue_declare(
                        queue.as_str().into(),
                        // passive: read the depth only; never create a queue.
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                total += u64::from(declared.message_count());
                let _ = channel.close(200, "depth read".into()).await;
            }
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(total)
    }
}

fn match_deliveries(
    scenario: &str,
    accepted: &[Sent],
    arrivals: &[Arrival],
    subs: &[u32],
) -> Matched {
    let sent: HashMap<u128, Instant> = accepted.iter().map(|s| (s.id, s.sent)).collect();
    let mut seen: HashSet<(u32, u128)> = HashSet::with_capacity(accepted.len() * subs.len());
    let mut check = Check {
        scenario: scenario.to_owned(),
        accepted: sent.len() as u64,
        expected: (sent.len() * subs.len()) as u64,
        ..Check::default()
    };
    let mut e2e = Vec::with_capacity(accepted.len() * subs.len());
    let mut last_arrival = None;
    for a in arrivals {
        let Some(sent_at) = sent.get(&a.id) else {
            check.unexpected += 1;
            continue;
        };
        if seen.insert((a.sub, a.id)) {
            check.delivered += 1;
            e2e.push(a.at.saturating_duration_since(*sent_at));
            last_arrival = Some(a.at);
        } else {
            check.duplicates += 1;
        }
    }
    check.lost = check.expected.saturating_sub(check.delivered);
    Matched {
        check,
        e2e,
        last_arrival,
    }
}
