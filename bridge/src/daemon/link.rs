//! What the two threads of one connection tell each other.
//!
//! The receiver thread reads every frame from the peer; the sender thread
//! writes every frame to it. Frames the receiver must answer (ACK and
//! SUBSCRIBE for imports, ERROR) and requests for the sender (the peer's
//! SUBSCRIBE and ACK for exports) go through a [`Link`]. ACKs are coalesced:
//! only the newest position per stream is kept, so the queue stays bounded
//! however fast data arrives.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, MutexGuard,
    },
    thread::Thread,
};

use crate::proto::frame::{
    Ack, Credit, ErrorCode, ErrorFrame, Frame, Subscribe, MAX_ERROR_MESSAGE_LEN,
};

/// Why a connection ends, as logged and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// Human-readable reason.
    pub message: String,
    /// Whether the peer broke the protocol (counted as a protocol error).
    pub protocol_error: bool,
}

/// Queues between the receiver and sender threads of a connection.
#[derive(Debug, Default)]
pub struct Queues {
    /// SUBSCRIBE frames from the peer, for the sender's exports.
    pub subscribes: Vec<Subscribe>,
    /// Newest ACK position per exported stream, from the peer.
    pub acks_in: BTreeMap<u32, u64>,
    /// Newest ACK position per imported stream, to send.
    pub acks_out: BTreeMap<u32, u64>,
    /// Newest CREDIT limit per exported stream, from the peer.
    pub credits_in: BTreeMap<u32, u64>,
    /// Newest CREDIT limit per imported stream, to send.
    pub credits_out: BTreeMap<u32, u64>,
    /// Encoded control frames to send, in order (SUBSCRIBE, ERROR).
    pub frames_out: VecDeque<Vec<u8>>,
}

/// Shared state of one connection's two threads.
#[derive(Debug)]
pub struct Link {
    queues: Mutex<Queues>,
    stop: AtomicBool,
    reason: Mutex<Option<CloseReason>>,
    sender: Thread,
}

impl Link {
    /// A link whose sender runs on thread `sender` (woken when work is queued).
    pub fn new(sender: Thread) -> Self {
        Self {
            queues: Mutex::new(Queues::default()),
            stop: AtomicBool::new(false),
            reason: Mutex::new(None),
            sender,
        }
    }

    /// Locks the queues.
    pub fn queues(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the queues, then wakes the sender.
    pub fn push(&self, f: impl FnOnce(&mut Queues)) {
        f(&mut self.queues());
        self.sender.unpark();
    }

    /// Queues an ACK for an imported stream (coalesced).
    pub fn ack(&self, stream: u32, position: u64) {
        self.push(|q| {
            let e = q.acks_out.entry(stream).or_insert(position);
            *e = (*e).max(position);
        });
    }

    /// Queues a CREDIT for an imported stream (coalesced: limits only grow).
    pub fn credit(&self, stream: u32, limit: u64) {
        self.push(|q| {
            let e = q.credits_out.entry(stream).or_insert(limit);
            *e = (*e).max(limit);
        });
    }

    /// Queues an encoded frame.
    pub fn send_frame(&self, frame: &Frame<'_>) {
        let mut v = Vec::new();
        // Frames built here are valid by construction; a failure would be a
        // bug and drops only that frame.
        if frame.encode_to_vec(&mut v).is_ok() {
            self.push(|q| q.frames_out.push_back(v));
        }
    }

    /// The stop flag both threads poll.
    pub fn stop_flag(&self) -> &AtomicBool {
        &self.stop
    }

    /// Whether the connection is closing.
    pub fn stopping(&self) -> bool {
        // Relaxed: a flag; the data each thread needs afterwards is behind
        // the queue mutex or owned by that thread.
        self.stop.load(Ordering::Relaxed)
    }

    /// Closes the connection for `reason` (the first reason given is kept).
    pub fn close(&self, message: impl Into<String>, protocol_error: bool) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_none() {
                *r = Some(CloseReason {
                    message: message.into(),
                    protocol_error,
                });
            }
        }
        // Relaxed: see `stopping`.
        self.stop.store(true, Ordering::Relaxed);
        self.sender.unpark();
    }

    /// Sends ERROR(`code`, `message`) to the peer, then closes for a
    /// protocol error.
    pub fn fail(&self, code: ErrorCode, message: String) {
        self.send_frame(&Frame::Error(ErrorFrame {
            code,
            message: truncate(&message, MAX_ERROR_MESSAGE_LEN),
        }));
        self.close(message, true);
    }

    /// The reason the connection closed, if it did.
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes the queued ACKs to send as frames.
    pub fn take_acks_out(q: &mut Queues) -> Vec<Ack> {
        std::mem::take(&mut q.acks_out)
            .into_iter()
            .map(|(stream, position)| Ack { stream, position })
            .collect()
    }
}

impl Link {
    /// Takes the queued CREDITs to send as frames.
    pub fn take_credits_out(q: &mut Queues) -> Vec<Credit> {
        std::mem::take(&mut q.credits_out)
            .into_iter()
            .map(|(stream, limit)| Credit { stream, limit })
            .collect()
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_coalesce_and_first_reason_wins() {
        let link = Link::new(std::thread::current());
        link.ack(1, 100);
        link.ack(1, 300);
        link.ack(1, 200);
        link.ack(2, 50);
        let acks = Link::take_acks_out(&mut link.queues());
        assert_eq!(
            acks,
            [
                Ack {
                    stream: 1,
                    position: 300
                },
                Ack {
                    stream: 2,
                    position: 50
                }
            ]
        );
        assert!(Link::take_acks_out(&mut link.queues()).is_empty());
        assert!(!link.stopping());
        link.fail(ErrorCode::Malformed, "bad".into());
        link.close("later", false);
        assert!(link.stopping());
        assert_eq!(
            link.reason(),
            Some(CloseReason {
                message: "bad".into(),
                protocol_error: true
            })
        );
        assert_eq!(link.queues().frames_out.len(), 1);
        assert_eq!(truncate("aé", 2), "a");
    }
}
