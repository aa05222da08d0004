//! The first answers to requests with an `Idempotency-Key`, so that a retry gets the same
//! answer, code included. Kept in memory only (the store keeps no codes): bounded, and
//! forgotten after a day or a restart, after which a retry gets the verification without
//! its code (the store still guarantees a single creation).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CAPACITY: usize = 10_000;
const TTL: Duration = Duration::from_secs(24 * 3600);

/// (API key id, Idempotency-Key).
pub type Slot = (String, String);

#[derive(Default)]
pub struct Replays {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    answers: HashMap<Slot, (Instant, Vec<u8>)>,
    order: VecDeque<Slot>,
}

impl Replays {
    pub fn remember(&self, slot: Slot, body: Vec<u8>) {
        let mut inner = self.inner.lock().expect("replay cache lock");
        while inner.order.len() >= CAPACITY {
            if let Some(old) = inner.order.pop_front() {
                inner.answers.remove(&old);
            }
        }
        inner.order.push_back(slot.clone());
        inner.answers.insert(slot, (Instant::now(), body));
    }

    pub fn get(&self, slot: &Slot) -> Option<Vec<u8>> {
        let inner = self.inner.lock().expect("replay cache lock");
        inner
            .answers
            .get(slot)
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, body)| body.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_stays_bounded() {
        let r = Replays::default();
        for i in 0..CAPACITY + 5 {
            r.remember(("k".into(), i.to_string()), vec![1]);
        }
        assert_eq!(r.get(&("k".into(), "0".into())), None);
        assert_eq!(
            r.get(&("k".into(), (CAPACITY + 4).to_string())),
            Some(vec![1])
        );
        assert!(r.inner.lock().unwrap().answers.len() <= CAPACITY);
    }
}
