//! The receive side's jitter buffer: holds a few packets to put reordered ones back in
//! sequence order, drops late and duplicate ones, and releases the rest in order.

use std::collections::BTreeMap;

/// A packet waiting for playout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub timestamp: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub struct JitterBuffer {
    depth: usize,
    waiting: BTreeMap<u64, Queued>,
    highest: Option<u64>,
    released: Option<u64>,
    /// Packets that came after a later one had been released, or twice.
    pub dropped: u64,
}

impl JitterBuffer {
    /// `depth`: packets held back before the oldest is released (3 × 20 ms = 60 ms).
    pub fn new(depth: usize) -> Self {
        Self {
            depth,
            waiting: BTreeMap::new(),
            highest: None,
            released: None,
            dropped: 0,
        }
    }

    /// Extends a 16-bit sequence number to the one closest to the highest seen so far.
    pub fn extend(&self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            return 1 << 32 | seq as u64;
        };
        let base = highest & !0xffff;
        [base.wrapping_sub(1 << 16), base, base + (1 << 16)]
            .into_iter()
            .map(|b| b | seq as u64)
            .min_by_key(|c| c.abs_diff(highest))
            .expect("three candidates")
    }

    /// Adds a packet; returns those now due, in sequence order.
    pub fn push(&mut self, seq: u16, packet: Queued) -> Vec<Queued> {
        let ext = self.extend(seq);
        if self.released.is_some_and(|r| ext <= r) || self.waiting.contains_key(&ext) {
            self.dropped += 1;
            return Vec::new();
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.waiting.insert(ext, packet);
        let mut due = Vec::new();
        while self.waiting.len() > self.depth {
            due.extend(self.pop());
        }
        due
    }

    /// Releases everything still held (at the end of the call).
    pub fn drain(&mut self) -> Vec<Queued> {
        std::iter::from_fn(|| self.pop()).collect()
    }

    fn pop(&mut self) -> Option<Queued> {
        let (ext, packet) = self.waiting.pop_first()?;
        self.released = Some(ext);
        Some(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(ts: u32) -> Queued {
        Queued {
            timestamp: ts,
            payload: vec![],
        }
    }

    #[test]
    fn reorders_within_its_depth_and_drops_late_and_duplicate_packets() {
        let mut jb = JitterBuffer::new(2);
        let mut out = Vec::new();
        for seq in [65534u16, 0, 65535, 1, 1, 2, 65533, 3] {
            out.extend(jb.push(seq, q(seq as u32)));
        }
        out.extend(jb.drain());
        let order: Vec<u32> = out.iter().map(|p| p.timestamp).collect();
        assert_eq!(order, [65534, 65535, 0, 1, 2, 3]);
        assert_eq!(jb.dropped, 2);
    }
}
