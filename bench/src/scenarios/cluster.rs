//! `anika bench cluster`: one closed-loop phase on a single node (`anika up` on one
//! RabbitMQ) and the same phase on the local RabbitMQ cluster (`scripts/cluster`) with one
//! catalog, two ingest and two dispatcher processes, in the same run. Beside delivered/s
//! and end-to-end p99 it reports what each unit of work cost: the CPU of every `anika`
//! process and every broker node per event, and the WAL bytes and rows PostgreSQL wrote
//! per event, the figures `docs/scaling.md` turns into a sizing table.

use std::time::Duration;

use super::Bench;
use crate::{
    CliError,
    load::{self, Until},
    report::Run,
    server::{amqp_ports, cpu_seconds, listener_pid, postgres_writes},
};

/// How long PostgreSQL's backends may take to report their statistics (an idle backend
/// reports after 10 s), before rows inserted are read.
const STATS_DELAY: Duration = Duration::from_secs(11);

/// The scenario label of the single-node phase.
pub const SINGLE: &str = "cluster.one-node";
/// The scenario label of the cluster phase.
pub const SPLIT: &str = "cluster.3-nodes";

/// The cost ratios of the cluster phase to the single-node phase of the same run.
pub fn ratio(run: &mut Run) {
    for metric in [
        "delivered_per_s",
        "e2e_p99_ms",
        "cpu_us_per_event[anika total]",
        "cpu_us_per_delivery[rabbitmq total]",
    ] {
        run.ratio(
            &format!("cluster/one_node {metric}"),
            (SPLIT, metric),
            (SINGLE, metric),
        );
    }
}

/// CPU seconds of each (label, pid) so far.
fn cpu_of(processes: &[(String, u32)]) -> Vec<Option<f64>> {
    processes.iter().map(|(_, pid)| cpu_seconds(*pid)).collect()
}

impl Bench<'_> {
    /// Closed loop into one subscription of the target, as `throughput` does, with the
    /// CPU of every process and broker node, and PostgreSQL's writes, per event.
    pub async fn costed_throughput(
        &mut self,
        run: &mut Run,
        scenario: &str,
    ) -> Result<(), CliError> {
        let fixture = self.fixture(scenario, 1).await?;
        let poster = self.poster(&fixture);
        // Warm-up (not reported): new processes, their pools, caches and consumers.
        let baseline = self.receiver.count();
        let warm = load::closed_loop(&poster, 8, 1, Until::Accepted(500)).await;
        let matched = self
            .drain(&format!("{scenario} warm-up"), &fixture, &warm, baseline)
            .await;
        run.checks.push(matched.check);

        let processes = self.target.processes();
        let brokers: Vec<(String, u32)> = amqp_ports(&self.target.amqp_url)
            .into_iter()
            .filter_map(|port| listener_pid(port).map(|pid| (format!("rabbitmq :{port}"), pid)))
            .collect();
        if brokers.is_empty() {
            run.notes.push(format!(
                "{scenario}: no broker process found listening on this machine; broker CPU not reported"
            ));
        }
        // The warm-up's statistics must be in before the phase's are counted from here.
        tokio::time::sleep(STATS_DELAY).await;
        let postgres_before = postgres_writes(&self.target.database_url).await;
        let cpu_before = (cpu_of(&processes), cpu_of(&brokers));

        let (load, matched) = self.saturate(scenario, &fixture, &poster).await;
        let cpu_after = (cpu_of(&processes), cpu_of(&brokers));
        tokio::time::sleep(STATS_DELAY).await;
        let postgres_after = postgres_writes(&self.target.database_url).await;

        let delivered = matched.check.delivered;
        self.record_saturated(run, scenario, &load, &matched);
        if delivered > 0 {
            let per = |before: &[Option<f64>], after: &[Option<f64>], labels: &[(String, u32)]| {
                let mut total = 0.0;
                let mut each = Vec::new();
                for ((label, _), (b, a)) in labels.iter().zip(before.iter().zip(after)) {
                    if let (Some(b), Some(a)) = (b, a) {
                        let us = (a - b) * 1e6 / delivered as f64;
                        total += us;
                        each.push((label.clone(), us));
                    }
                }
                (total, each)
            };
            let (total, each) = per(&cpu_before.0, &cpu_after.0, &processes);
            if !each.is_empty() {
                for (label, us) in each {
                    run.add(scenario, &format!("cpu_us_per_event[{label}]"), us);
                }
                run.add(scenario, "cpu_us_per_event[anika total]", total);
            }
            let (total, each) = per(&cpu_before.1, &cpu_after.1, &brokers);
            if !each.is_empty() {
                for (label, us) in each {
                    run.add(scenario, &format!("cpu_us_per_delivery[{label}]"), us);
                }
                run.add(scenario, "cpu_us_per_delivery[rabbitmq total]", total);
            }
            match (postgres_before, postgres_after) {
                (Ok((wal_before, rows_before)), Ok((wal_after, rows_after))) => {
                    let phase_events = load.accepted.len() as f64;
                    run.add(
                        scenario,
                        "postgres_wal_bytes_per_event",
                        (wal_after - wal_before) / phase_events,
                    );
                    run.add(
                        scenario,
                        "postgres_rows_inserted_per_event",
                        (rows_after - rows_before) / phase_events,
                    );
                }
                (Err(e), _) | (_, Err(e)) => run.notes.push(format!(
                    "{scenario}: PostgreSQL's write figures unavailable: {e}"
                )),
            }
        }
        run.checks.push(matched.check);
        fixture.delete(&self.api).await
    }
}
