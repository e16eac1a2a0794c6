//! `anika-bench` (also run as `anika bench`): load through the public API, deliveries measured by `webhook-id`,
//! every figure also as a ratio to the raw ceiling it sits on, and a check that
//! nothing answered 202 was lost.
//!
//! By default the system under test is an `anika up` child process with its own
//! database and vhost (removed at the end, also on error and Ctrl-C); `--url`
//! benchmarks an installation that is already running.

//!
//! A binary of its own, so that the product binary carries none of the load
//! generator, its receiver or the `standardwebhooks` checker.

#![allow(clippy::print_stdout)] // the report is what the command is for

use std::{io::IsTerminal, process::ExitCode, sync::Arc, time::Duration};

use anika_shared::config::Config;
use clap::{Parser, ValueEnum};
use serde_json::json;

/// A failure of the bench, with its cause chain.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Measure throughput and latency through the public API, with ratios to the raw ceilings.
#[derive(Debug, Parser)]
#[command(name = "anika-bench", version, about)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

/// The same allocator as the product binary, so the load generator costs what it did inside it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match Config::load() {
        Ok(config) => {
            anika_shared::telemetry::init(config.log_format);
            server::use_binary(cli.args.server.clone());
            bench(config, cli.args).await
        }
        Err(e) => Err(e.into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            let mut source = std::error::Error::source(&*error);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

mod api;
mod ceiling;
mod load;
mod receiver;
mod report;
mod scenarios;
mod server;
mod wire;

/// What `anika bench` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Open-loop fixed rates: end-to-end and ingest latency percentiles.
    Latency,
    /// Closed loop, one subscription: accepted and delivered events/s.
    Throughput,
    /// Closed loop into a paused subscription: single-event ingest alone.
    Ingest,
    /// One topic, many subscriptions: deliveries/s.
    Fanout,
    /// Batch ingest events/s.
    Batch,
    /// The raw limits: RabbitMQ confirmed publishes, PostgreSQL inserts, the receiver.
    Ceiling,
    /// A million events: flat memory, no backlog left.
    Soak,
    /// A healthy partner beside one whose endpoint answers after 2 s: p99 with and without.
    Noisy,
    /// Single events offered at twice the measured capacity: accepted rate, latency, refusals, losses.
    Overload,
    /// The same closed loop on one node and on the local RabbitMQ cluster (`scripts/cluster
    /// start`) with a catalog, 2 ingest and 2 dispatcher processes: rates, p99 and the CPU
    /// each process and broker node spent per event.
    Cluster,
    /// Every scenario but soak, noisy, overload and cluster.
    All,
}

/// Options of `anika bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The scenario to run.
    #[arg(value_enum, default_value = "all")]
    pub scenario: Scenario,
    /// Benchmark a running installation at this URL instead of starting one.
    #[arg(long, requires = "operator_key")]
    pub url: Option<String>,
    /// The `anika` binary to start as the system under test (default: the `anika` next to
    /// this binary), e.g. an older build to compare with.
    #[arg(long, env = "ANIKA_BENCH_SERVER")]
    pub server: Option<std::path::PathBuf>,
    /// An operator API key of the installation at --url.
    #[arg(long, env = "ANIKA_BENCH_OPERATOR_KEY", hide_env_values = true)]
    pub operator_key: Option<String>,
    /// Repeat everything this many times and report medians.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Rates of the latency scenario (events/s).
    #[arg(long, value_delimiter = ',', default_value = "200,1000,3000")]
    pub rates: Vec<u32>,
    /// How long each load phase lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How long the overload scenario offers twice the measured capacity.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub overload_duration: Duration,
    /// Connections the overload scenario's open loop holds, opened before it starts (a fleet
    /// of clients already connected; a request waits for a free one, and the wait counts).
    #[arg(long, default_value_t = 1024)]
    pub overload_connections: usize,
    /// Closed-loop clients that measure the overload scenario's capacity, before and after the
    /// overload: enough that more add no throughput (64 left the server short of saturation).
    #[arg(long, default_value_t = 256)]
    pub overload_clients: usize,
    /// Offer the overload with the subscription paused (resumed for the delivery check), so
    /// that the server's deliveries do not compete with its ingest for the cores.
    #[arg(long)]
    pub overload_paused: bool,
    /// How long each ceiling is measured.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub ceiling_duration: Duration,
    /// Concurrent clients of the closed-loop scenarios (single events).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Subscriptions of the fan-out scenario.
    #[arg(long, default_value_t = 50)]
    pub subscriptions: usize,
    /// Events/s posted in the fan-out scenario (each delivered to every subscription).
    #[arg(long, default_value_t = 300)]
    pub fanout_rate: u32,
    /// Events/s the healthy partner of the noisy scenario posts (to each of its 10 subscriptions).
    #[arg(long, default_value_t = 100)]
    pub calm_rate: u32,
    /// Events the noisy partner posts before the measured phase (each to its 8 subscriptions
    /// to a 2 s endpoint: a backlog its fair share of the slots takes longer than --duration).
    #[arg(long, default_value_t = 1000)]
    pub noisy_events: u64,
    /// `max_in_flight` of the noisy partner's subscriptions (default: the most the API allows,
    /// so that only the fair share of delivery slots holds them back).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub noisy_max_in_flight: u32,
    /// Events per batch request.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Concurrent batch clients (also the connections of the PostgreSQL ceiling).
    #[arg(long, default_value_t = 4)]
    pub batch_concurrency: usize,
    /// Approximate size of each event's `data` in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Events of the soak scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// How long to wait for the last deliveries after a load phase.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Verify the signature of one delivery in this many.
    #[arg(long, default_value_t = 1000)]
    pub verify_every: u64,
    /// RabbitMQ management API (to make and remove the bench's vhost).
    #[arg(
        long,
        env = "ANIKA_BENCH_RABBITMQ_API",
        default_value = "http://guest:guest@127.0.0.1:15672"
    )]
    pub rabbitmq_api: String,
    /// Keep the bench's database and vhost afterwards.
    #[arg(long)]
    pub keep: bool,
    /// The cluster scenario's RabbitMQ nodes (`scripts/cluster urls` prints them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "amqp://guest:guest@127.0.0.1:5701,amqp://guest:guest@127.0.0.1:5702,amqp://guest:guest@127.0.0.1:5703"
    )]
    pub cluster_amqp: Vec<String>,
    /// The management API of one of the cluster's nodes (for the scenario's vhost).
    #[arg(long, default_value = "http://guest:guest@127.0.0.1:15701")]
    pub cluster_api: String,
    /// `anika serve ingest` processes of the cluster scenario.
    #[arg(long, default_value_t = 2)]
    pub cluster_ingest: usize,
    /// `anika serve dispatcher` processes of the cluster scenario.
    #[arg(long, default_value_t = 2)]
    pub cluster_dispatchers: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    fn scenarios(&self) -> Vec<Scenario> {
        match self.scenario {
            // The ceilings first: they are measured on an idle machine, like the pipeline after them.
            Scenario::All => vec![
                Scenario::Ceiling,
                Scenario::Latency,
                Scenario::Throughput,
                Scenario::Ingest,
                Scenario::Batch,
                Scenario::Fanout,
            ],
            one => vec![one],
        }
    }
}

/// `anika bench`.
pub async fn bench(config: Config, args: BenchArgs) -> Result<(), CliError> {
    if args.runs == 0
        || args.rates.contains(&0)
        || args.concurrency == 0
        || args.calm_rate == 0
        || args.noisy_events == 0
    {
        return Err(
            "--runs, --rates, --concurrency, --calm-rate and --noisy-events must be positive"
                .into(),
        );
    }
    let mut targets = Targets::default();
    let outcome = tokio::select! {
        outcome = run(&config, &args, &mut targets) => outcome,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    for mut target in [targets.main.take(), targets.split.take()]
        .into_iter()
        .flatten()
    {
        target.stop(args.keep, outcome.is_err()).await;
    }
    let report = outcome?;
    if args.json {
        report.print_json()?;
    } else {
        report.print_table();
    }
    if report.lost > 0 {
        return Err(format!("{} accepted events were never delivered", report.lost).into());
    }
    Ok(())
}

/// What the bench started, stopped whatever the outcome.
#[derive(Default)]
struct Targets {
    /// `anika up`, or the installation at `--url`.
    main: Option<server::Target>,
    /// The cluster scenario's catalog, ingest and dispatcher processes.
    split: Option<server::Target>,
}

async fn run(
    config: &Config,
    args: &BenchArgs,
    targets: &mut Targets,
) -> Result<report::Report, CliError> {
    if args.scenario == Scenario::Cluster {
        if args.url.is_some() {
            return Err("the cluster scenario starts its own processes; it takes no --url".into());
        }
        let name = format!("{}_split", server::run_name());
        eprintln!(
            "starting a catalog, {} ingest and {} dispatcher processes on {} (database and vhost {name}) …",
            args.cluster_ingest,
            args.cluster_dispatchers,
            args.cluster_amqp.join(",")
        );
        let target = targets.split.insert(
            server::Target::prepare(config, &name, &args.cluster_api, &args.cluster_amqp, true)
                .await
                .map_err(|e| {
                    format!("{e} (is the cluster running? `scripts/cluster start` starts it)")
                })?,
        );
        target
            .start_split(server::Shape {
                ingest: args.cluster_ingest,
                dispatcher: args.cluster_dispatchers,
            })
            .await?;
    }
    let slot = &mut targets.main;
    let mode = match (&args.url, &args.operator_key) {
        (Some(url), Some(key)) => {
            *slot = Some(server::Target::existing(config, url.clone(), key.clone()));
            format!("running installation at {url}")
        }
        _ => {
            let name = server::run_name();
            eprintln!("starting `anika up` (database and vhost {name}) …");
            *slot = Some(server::Target::spawn(config, &name, &args.rabbitmq_api).await?);
            slot.as_mut().expect("just set").wait_ready().await?;
            "`anika up` child process (fresh database and vhost)".to_owned()
        }
    };
    let target = slot.as_ref().expect("set above");
    let api = api::Api::new(&target.base, args.concurrency)?;
    let operator = api::Credential::login(&api, target.operator_key.clone()).await?;
    let receiver = receiver::Receiver::start(args.verify_every).await?;
    let mut bench = scenarios::Bench {
        args,
        target,
        api,
        operator: Arc::clone(&operator),
        receiver,
        next_index: 0,
        queue_type: config.queue_type,
    };
    let mut runs = Vec::new();
    for n in 0..args.runs {
        if args.runs > 1 && !std::io::stderr().is_terminal() {
            eprintln!("run {} of {}", n + 1, args.runs);
        }
        let mut run = report::Run::default();
        for scenario in args.scenarios() {
            match scenario {
                Scenario::Latency => bench.latency(&mut run).await?,
                Scenario::Throughput => bench.throughput(&mut run).await?,
                Scenario::Ingest => bench.ingest(&mut run).await?,
                Scenario::Fanout => bench.fanout(&mut run).await?,
                Scenario::Batch => bench.batch(&mut run).await?,
                Scenario::Ceiling => bench.ceiling(&mut run).await?,
                Scenario::Soak => bench.soak(&mut run).await?,
                Scenario::Noisy => bench.noisy(&mut run).await?,
                Scenario::Overload => bench.overload(&mut run).await?,
                Scenario::Cluster => {
                    bench
                        .costed_throughput(&mut run, scenarios::CLUSTER_SINGLE)
                        .await?;
                    let split = targets.split.as_ref().expect("started above");
                    let api = api::Api::new(&split.base, args.concurrency)?
                        .posting_to(&split.ingest_bases);
                    let mut on_cluster = scenarios::Bench {
                        args,
                        target: split,
                        operator: api::Credential::login(&api, split.operator_key.clone()).await?,
                        api,
                        receiver: bench.receiver.clone(),
                        next_index: bench.next_index,
                        queue_type: config.queue_type,
                    };
                    on_cluster
                        .costed_throughput(&mut run, scenarios::CLUSTER_SPLIT)
                        .await?;
                    bench.next_index = on_cluster.next_index;
                }
                Scenario::All => {}
            }
        }
        ratios(&mut run);
        runs.push(run);
    }
    let (verified, bad) = bench.receiver.signatures();
    if bad > 0 {
        return Err(
            format!("{bad} of {verified} sampled webhook signatures did not verify").into(),
        );
    }
    let setup = json!({
        "server": mode,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu_model(),
        "queue type": format!("{:?}", config.queue_type).to_lowercase(),
        "payload": format!("{} bytes of data per event", args.payload_bytes),
        "phases": format!(
            "{:?} each (ceilings {:?}); {} closed-loop clients; batches of {} from {} clients; fan-out {} subscriptions at {} events/s",
            args.duration, args.ceiling_duration, args.concurrency, args.batch_size,
            args.batch_concurrency, args.subscriptions, args.fanout_rate
        ),
        "signatures": format!(
            "1 in {} deliveries verified with the standardwebhooks crate: {} checked, {} bad",
            args.verify_every, verified + bad, bad
        ),
        "latency": "e2e = POST sent -> webhook received at the bench's receiver; ingest = POST sent -> 202 read",
    });
    Ok(report::Report::new(setup, runs))
}

/// Every result as a share of the raw limit it sits on, from figures of the same run.
fn ratios(run: &mut report::Run) {
    let rabbit = ("ceiling", "rabbitmq_publish_per_s");
    let postgres = ("ceiling", "postgres_insert_rows_per_s");
    let receiver = ("ceiling", "receiver_requests_per_s");
    // Like for like: the ceiling publishes into a queue nobody consumes, and so
    // does ingest alone; while delivering, the same cores also deliver each event.
    run.ratio(
        "ingest_alone/rabbitmq_publish",
        ("ingest", "accepted_per_s"),
        rabbit,
    );
    run.ratio(
        "ingest_while_delivering/rabbitmq_publish",
        ("throughput", "accepted_per_s"),
        rabbit,
    );
    run.ratio(
        "delivered/rabbitmq_publish",
        ("throughput", "delivered_per_s"),
        rabbit,
    );
    run.ratio(
        "delivered/receiver",
        ("throughput", "delivered_per_s"),
        receiver,
    );
    run.ratio(
        "batch_ingest/postgres_insert",
        ("batch", "accepted_per_s"),
        postgres,
    );
    run.ratio(
        "batch_ingest/rabbitmq_publish",
        ("batch", "accepted_per_s"),
        rabbit,
    );
    run.ratio(
        "fanout_deliveries/receiver",
        ("fanout", "deliveries_per_s"),
        receiver,
    );
    scenarios::noisy_ratio(run);
    scenarios::cluster_ratio(run);
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
