//! A subscription's cap on requests in flight to its endpoint (`max_in_flight`), resizable live.
//!
//! The cap is independent of the consumer's prefetch: a consumer may hold 200
//! messages while only `max_in_flight` of them are on the wire, the rest waiting
//! here first come, first served. A PATCH changes the cap of a running
//! subscription; shrinking below what is in flight takes effect as those
//! requests finish (a request on the wire is never cut).

use std::sync::Mutex;

use tokio::sync::{Semaphore, SemaphorePermit};

#[derive(Debug)]
struct Size {
    limit: u32,
    /// Permits to forget as they come back, after a shrink found them in use.
    debt: u32,
}

/// The cap of one subscription.
#[derive(Debug)]
pub struct InFlight {
    semaphore: Semaphore,
    size: Mutex<Size>,
}

/// One request's place under the cap, held until dropped.
#[derive(Debug)]
pub struct Place<'a> {
    permit: Option<SemaphorePermit<'a>>,
    owner: &'a InFlight,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take()
            && self.owner.owes()
        {
            permit.forget();
        }
    }
}

impl InFlight {
    /// A cap of `limit` requests.
    pub fn new(limit: u32) -> Self {
        Self {
            semaphore: Semaphore::new(limit as usize),
            size: Mutex::new(Size { limit, debt: 0 }),
        }
    }

    /// Waits for a place under the cap.
    pub async fn acquire(&self) -> Place<'_> {
        let permit = self
            .semaphore
            .acquire()
            .await
            .expect("the semaphore is never closed");
        Place {
            permit: Some(permit),
            owner: self,
        }
    }

    /// Changes the cap; requests already in flight finish.
    pub fn resize(&self, limit: u32) {
        let mut size = self.size.lock().expect("in-flight lock");
        if limit > size.limit {
            let grow = limit - size.limit;
            let repaid = grow.min(size.debt);
            size.debt -= repaid;
            self.semaphore.add_permits((grow - repaid) as usize);
        } else if limit < size.limit {
            let shrink = size.limit - limit;
            let forgotten = self.semaphore.forget_permits(shrink as usize) as u32;
            size.debt += shrink - forgotten;
        }
        size.limit = limit;
    }

    /// Whether a returning permit pays off a shrink instead of freeing a place.
    fn owes(&self) -> bool {
        let mut size = self.size.lock().expect("in-flight lock");
        if size.debt > 0 {
            size.debt -= 1;
            true
        } else {
            false
        }
    }

    /// Requests holding a place now (those over a shrunk cap included).
    pub fn in_use(&self) -> usize {
        let size = self.size.lock().expect("in-flight lock");
        (size.limit as usize + size.debt as usize)
            .saturating_sub(self.semaphore.available_permits())
    }

    /// Places free now.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.semaphore.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cap_holds_and_follows_a_resize_both_ways() {
        let cap = InFlight::new(3);
        let held: Vec<Place<'_>> = vec![cap.acquire().await, cap.acquire().await];
        assert_eq!(cap.available(), 1);
        // Shrink to 1 with two in flight: nothing new until both are back, then one place.
        cap.resize(1);
        assert_eq!(cap.available(), 0);
        drop(held);
        assert_eq!(cap.available(), 1);
        let one = cap.acquire().await;
        assert_eq!(cap.available(), 0);
        // Grow while in use: the new places are there at once.
        cap.resize(4);
        assert_eq!(cap.available(), 3);
        drop(one);
        assert_eq!(cap.available(), 4);
    }

    #[tokio::test]
    async fn growing_before_in_flight_requests_return_cancels_the_pending_shrink() {
        let cap = InFlight::new(2);
        let held = (cap.acquire().await, cap.acquire().await);
        cap.resize(1); // owes one
        cap.resize(2); // back: nothing owed
        drop(held);
        assert_eq!(cap.available(), 2);
    }
}
