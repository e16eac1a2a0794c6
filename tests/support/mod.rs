//! Support for tests that run the real `anika` binary as a child process.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::{
    collections::HashSet,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anika_testkit::{Api, Receiver, TestEnv};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

pub use anika_testkit::OPERATOR_KEY;

/// How many of a child's last WARN lines are kept for a failing test to show.
const KEPT_WARNINGS: usize = 200;

/// A running `anika` process.
pub struct Anika {
    child: Child,
    /// Its API.
    pub api: Api,
    /// Its process id.
    pub pid: u32,
    /// The lines it logged at ERROR (or panics), in order.
    errors: Arc<Mutex<Vec<String>>>,
    /// The last lines it logged at WARN, shown when a test fails to say what it went through.
    warnings: Arc<Mutex<std::collections::VecDeque<String>>>,
    /// Reads its stderr until the process closes it.
    logs: tokio::task::JoinHandle<()>,
}

/// The environment every child gets, plus `extra`.
pub fn child_env(env: &TestEnv, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = [
        ("ANIKA_DATABASE_URL", env.database_url.as_str()),
        ("ANIKA_AMQP_URL", env.amqp_url.as_str()),
        ("ANIKA_LISTEN", "127.0.0.1:0"),
        ("ANIKA_BOOTSTRAP_OPERATOR_KEY", OPERATOR_KEY),
        ("ANIKA_ALLOWED_TARGET_NETS", "127.0.0.0/8"),
        ("ANIKA_RETRY_SCHEDULE", "100ms,200ms,400ms,800ms"),
        ("ANIKA_RECONCILE_INTERVAL", "2s"),
        ("ANIKA_OUTBOX_RELAY_AFTER", "1s"),
        ("ANIKA_OUTBOX_RELAY_INTERVAL", "250ms"),
        ("ANIKA_LOG_FORMAT", "json"),
        ("ANIKA_CONFIG", "/nonexistent/anika.toml"),
        ("ANIKA_SECRET_KEYS", anika_testkit::TEST_SECRET_KEYS),
        // As in the test kit's configuration: parallel tests make latency the machine's.
        ("ANIKA_SHED_TARGET", "0s"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in extra {
        vars.retain(|(key, _)| key != k);
        vars.push(((*k).to_owned(), (*v).to_owned()));
    }
    vars
}

/// Runs `anika <args>` to completion with the test's environment; returns (status, stdout, stderr).
pub async fn run_cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    run_cli_with(env, &[], args).await
}

/// Runs `anika <args>` to completion with the test's environment and `extra`; returns (status, stdout, stderr).
pub async fn run_cli_with(
    env: &TestEnv,
    extra: &[(&str, &str)],
    args: &[&str],
) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_anika"))
        .args(args)
        .envs(child_env(env, extra))
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run anika");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Anika {
    /// Starts `anika up` and waits until its banner says where it listens.
    pub async fn up(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_anika"))
            .arg("up")
            .envs(child_env(env, extra))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn anika up");
        let pid = child.id().expect("pid");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // Keep the logs flowing (a full pipe would block the child); show them on failure.
        let errors = Arc::new(Mutex::new(Vec::new()));
        let warnings = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let logs = tokio::spawn({
            let errors = Arc::clone(&errors);
            let warnings = Arc::clone(&warnings);
            async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("\"ERROR\"") || line.contains("panicked") {
                        eprintln!("[anika {pid}] {line}");
                        errors.lock().unwrap().push(line);
                    } else if line.contains("\"WARN\"") {
                        let mut warnings = warnings.lock().unwrap();
                        if warnings.len() == KEPT_WARNINGS {
                            warnings.pop_front();
                        }
                        warnings.push_back(line);
                    }
                }
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.trim().strip_prefix("API") {
                    return rest.trim().trim_end_matches("/v1").to_owned();
                }
            }
            panic!("anika up exited before printing its banner");
        })
        .await
        .expect("anika up started within 60 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = base
            .trim_start_matches("http://")
            .parse()
            .expect("listen address");
        Self {
            child,
            api: Api::new(addr),
            pid,
            errors,
            warnings,
            logs,
        }
    }

    /// Prints the last lines it logged at WARN (for a failing test's output).
    pub fn show_warnings(&self) {
        for line in self.warnings.lock().unwrap().iter() {
            eprintln!("[anika {} warn] {line}", self.pid);
        }
    }

    /// Kills the process with SIGKILL: no shutdown, no flush, nothing.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub async fn terminate(self) {
        self.stop_logging_errors().await;
    }

    /// Stops the process with SIGTERM and asserts that it stopped cleanly: exit
    /// status 0 and not one line at ERROR from the signal on.
    pub async fn terminate_cleanly(self) {
        let pid = self.pid;
        let (status, errors) = self.stop_logging_errors().await;
        assert!(
            status.is_some_and(|s| s.success()),
            "anika {pid} stopped with {status:?}"
        );
        assert!(
            errors.is_empty(),
            "anika {pid} logged errors while stopping:\n{}",
            errors.join("\n")
        );
    }

    /// SIGTERM, then waits for the exit and the last log line; returns the exit
    /// status and the ERROR lines logged from the signal on.
    async fn stop_logging_errors(mut self) -> (Option<std::process::ExitStatus>, Vec<String>) {
        let before = self.errors.lock().unwrap().len();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        // The pipe closes with the process: the reader then has every line.
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.logs).await;
        let errors = self.errors.lock().unwrap().split_off(before);
        (status, errors)
    }
}

/// A running `anika serve <role>` process (no banner: it is found by its effects).
pub struct Role {
    child: Child,
    /// Its process id.
    pub pid: u32,
}

impl Role {
    /// Starts `anika serve <role>` with the test's environment plus `extra`.
    pub fn start(env: &TestEnv, role: &str, extra: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_anika"))
            .args(["serve", role])
            .envs(child_env(env, extra))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn anika serve");
        let pid = child.id().expect("pid");
        let stderr = child.stderr.take().expect("stderr");
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("\"ERROR\"") || line.contains("panicked") {
                    eprintln!("[anika serve {pid}] {line}");
                }
            }
        });
        Self { child, pid }
    }

    /// Kills the process with SIGKILL.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }
}

/// A dealer with a topic, a publisher token, and one subscription per receiver.
pub struct World {
    pub topic: String,
    pub publisher: String,
    pub admin: String,
    pub subscriptions: Vec<String>,
}

impl World {
    /// Creates a dealer, its topic, and a subscription to `receiver` with `extra` fields.
    pub async fn new(api: &Api, receiver: &Receiver, extra: Value) -> Self {
        let operator = api.token(OPERATOR_KEY).await;
        let dealer = api.partner(&operator, "dealer").await;
        let topic = api
            .post("/v1/topics", &dealer.admin, json!({"name": "car.chosen"}))
            .await
            .expect(201);
        let topic = topic["id"].as_str().expect("topic id").to_owned();
        let mut body = json!({"topic_id": topic, "url": receiver.url("/hook")});
        for (k, v) in extra.as_object().expect("fields") {
            body[k] = v.clone();
        }
        let sub = api
            .post("/v1/subscriptions", &dealer.admin, body)
            .await
            .expect(201);
        Self {
            topic,
            publisher: dealer.publisher,
            admin: dealer.admin,
            subscriptions: vec![sub["id"].as_str().expect("id").to_owned()],
        }
    }

    /// Posts one event; `Some(id)` if it was accepted (202).
    pub async fn post(&self, api: &Api, data: Value) -> Option<String> {
        let answer = api
            .post(
                &format!("/v1/topics/{}/events", self.topic),
                &self.publisher,
                json!({"data": data}),
            )
            .await;
        (answer.status == 202).then(|| answer.body["id"].as_str().expect("id").to_owned())
    }
}

/// Posts events continuously (a few in flight) and remembers which were accepted.
pub struct Poster {
    accepted: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<u64>>,
    stop: tokio_util_stop::Stop,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A tiny stop flag (the tests do not pull in tokio-util).
mod tokio_util_stop {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn set(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
}

impl Poster {
    /// Starts `parallel` posters against whatever base URL `api_of` returns at each post
    /// (so they follow a restarted process).
    pub fn start(api: Arc<Mutex<Api>>, topic: String, publisher: String, parallel: usize) -> Self {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(0));
        let stop = tokio_util_stop::Stop::default();
        let tasks = (0..parallel)
            .map(|worker| {
                let (api, topic, publisher) = (Arc::clone(&api), topic.clone(), publisher.clone());
                let (accepted, refused, stop) =
                    (Arc::clone(&accepted), Arc::clone(&refused), stop.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .expect("client");
                    let mut n = 0u64;
                    while !stop.is_set() {
                        n += 1;
                        let base = api.lock().expect("api").base.clone();
                        let sent = client
                            .post(format!("{base}/v1/topics/{topic}/events"))
                            .bearer_auth(&publisher)
                            .json(&json!({"data": {"worker": worker, "n": n}}))
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == 202 => {
                                let body: Value = r.json().await.expect("202 body");
                                accepted
                                    .lock()
                                    .expect("accepted")
                                    .push(body["id"].as_str().expect("id").to_owned());
                            }
                            _ => {
                                *refused.lock().expect("refused") += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Self {
            accepted,
            refused,
            stop,
            tasks,
        }
    }

    /// How many were accepted so far.
    pub fn accepted_count(&self) -> usize {
        self.accepted.lock().expect("accepted").len()
    }

    /// Stops posting; returns the accepted ids and the number of refused or failed posts.
    pub async fn stop(self) -> (Vec<String>, u64) {
        self.stop.set();
        for task in self.tasks {
            let _ = task.await;
        }
        let accepted = self.accepted.lock().expect("accepted").clone();
        let refused = *self.refused.lock().expect("refused");
        (accepted, refused)
    }
}

/// Like [`await_deliveries`], for a backlog of thousands drained by a debug build on a busy
/// machine: waits while deliveries keep arriving, and gives up only once no missing id
/// arrived for `stall` (or after `cap` in all). A slow drain is late, not lost; a lost
/// event stops the progress and fails the test all the same.
pub async fn await_draining(
    receiver: &Receiver,
    expected: &[String],
    stall: Duration,
    cap: Duration,
) -> (Vec<String>, usize) {
    let started = Instant::now();
    let mut missing_before = usize::MAX;
    let mut progressed = Instant::now();
    loop {
        let (missing, duplicates) = await_deliveries(receiver, expected, Duration::ZERO).await;
        if missing.len() < missing_before {
            missing_before = missing.len();
            progressed = Instant::now();
        }
        if missing.is_empty() || progressed.elapsed() >= stall || started.elapsed() >= cap {
            eprintln!(
                "drained {} of {} in {:?}",
                expected.len() - missing.len(),
                expected.len(),
                started.elapsed()
            );
            return (missing, duplicates);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until every id in `expected` reached `receiver`; returns (missing, duplicates).
pub async fn await_deliveries(
    receiver: &Receiver,
    expected: &[String],
    timeout: Duration,
) -> (Vec<String>, usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = receiver.received();
        let ids: Vec<String> = got
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        let seen: HashSet<&String> = ids.iter().collect();
        let missing: Vec<String> = expected
            .iter()
            .filter(|id| !seen.contains(id))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            let unique: HashSet<&String> = ids.iter().collect();
            return (missing, ids.len() - unique.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
