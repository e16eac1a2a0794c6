//! A circuit breaker per subscription: an endpoint that fails every attempt is probed, not hammered.
//!
//! After `threshold` consecutive failures the breaker opens: deliveries wait
//! out a cool-down (doubling up to a minute), then one probe goes through
//! while the others keep waiting. A success closes it; a failure reopens it.
//! Messages waiting here do not spend their attempts.

use std::time::Duration;

use tokio::{
    sync::{Mutex, Notify},
    time::Instant,
};

const FIRST_COOLDOWN: Duration = Duration::from_millis(500);
const MAX_COOLDOWN: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Inner {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    cooldown: Duration,
}

/// The breaker of one subscription.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    inner: std::sync::Mutex<Inner>,
    probe: Mutex<()>,
    /// Wakes deliveries waiting out a cool-down when the breaker is reset.
    reset: Notify,
}

/// Held while a delivery is allowed through; a probe holds the probe lock.
#[derive(Debug)]
pub struct Pass<'a> {
    _probe: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures (0 disables the breaker).
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold,
            inner: std::sync::Mutex::new(Inner {
                consecutive_failures: 0,
                open_until: None,
                cooldown: FIRST_COOLDOWN,
            }),
            probe: Mutex::new(()),
            reset: Notify::new(),
        }
    }

    /// Waits until a delivery may go out.
    pub async fn pass(&self) -> Pass<'_> {
        loop {
            // Made before reading the state, so a reset in between is not missed.
            let reset = self.reset.notified();
            let open_until = self.inner.lock().expect("breaker").open_until;
            let Some(until) = open_until else {
                return Pass { _probe: None };
            };
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = reset => continue,
            }
            let guard = self.probe.lock().await;
            // Another probe may have closed (or reopened) the breaker while we waited.
            let state = self.inner.lock().expect("breaker").open_until;
            match state {
                None => return Pass { _probe: None },
                Some(until) if until <= Instant::now() => {
                    return Pass {
                        _probe: Some(guard),
                    };
                }
                Some(_) => continue,
            }
        }
    }

    /// Records a success: closes the breaker.
    pub fn succeeded(&self) {
        let mut inner = self.inner.lock().expect("breaker");
        inner.consecutive_failures = 0;
        inner.open_until = None;
        inner.cooldown = FIRST_COOLDOWN;
    }

    /// Forgets past failures and lets waiting deliveries through at once: the
    /// endpoint was re-enabled or changed, so its old failures say nothing.
    pub fn reset(&self) {
        self.succeeded();
        self.reset.notify_waiters();
    }

    /// Records a failure: may open (or reopen, longer) the breaker.
    pub fn failed(&self) {
        if self.threshold == 0 {
            return;
        }
        let mut inner = self.inner.lock().expect("breaker");
        inner.consecutive_failures += 1;
        if inner.consecutive_failures >= self.threshold {
            if inner.open_until.is_some() {
                // A probe failed: wait longer before the next one.
                inner.cooldown = (inner.cooldown * 2).min(MAX_COOLDOWN);
            } else {
                metrics::counter!(crate::meters::BREAKER_OPENED).increment(1);
            }
            inner.open_until = Some(Instant::now() + inner.cooldown);
        }
    }

    /// Whether deliveries are being held back now.
    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        self.inner.lock().expect("breaker").open_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn it_opens_after_the_threshold_and_waits_a_growing_cooldown() {
        let breaker = Breaker::new(3);
        for _ in 0..2 {
            breaker.failed();
        }
        assert!(!breaker.is_open());
        let started = Instant::now();
        drop(breaker.pass().await);
        assert_eq!(started.elapsed(), Duration::ZERO, "closed: no wait");

        breaker.failed();
        assert!(breaker.is_open());
        let started = Instant::now();
        drop(breaker.pass().await);
        assert_eq!(started.elapsed(), FIRST_COOLDOWN);

        breaker.failed(); // the probe failed: reopen, twice as long next time
        breaker.failed();
        let started = Instant::now();
        drop(breaker.pass().await);
        assert!(
            started.elapsed() >= FIRST_COOLDOWN * 2,
            "{:?}",
            started.elapsed()
        );

        breaker.succeeded();
        assert!(!breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_lets_a_waiting_delivery_through_at_once() {
        let breaker = std::sync::Arc::new(Breaker::new(1));
        for _ in 0..5 {
            breaker.failed(); // cool-down now 8 s
        }
        let waiting = tokio::spawn({
            let breaker = std::sync::Arc::clone(&breaker);
            async move {
                let started = Instant::now();
                drop(breaker.pass().await);
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        breaker.reset();
        assert_eq!(waiting.await.unwrap(), Duration::from_millis(100));
        assert!(!breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_probe_goes_through_while_open() {
        let breaker = std::sync::Arc::new(Breaker::new(1));
        breaker.failed();
        let first = breaker.pass().await;
        let second = {
            let breaker = std::sync::Arc::clone(&breaker);
            tokio::spawn(async move {
                let _pass = breaker.pass().await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !second.is_finished(),
            "a second delivery waits for the probe's verdict"
        );
        breaker.succeeded();
        drop(first);
        second.await.unwrap();
    }
}
