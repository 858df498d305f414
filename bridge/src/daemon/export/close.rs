//! Ending a connection: last frames out, the kernel done with our
//! zero-copy sends (or the socket reset), and the streams' protection
//! reset for the next connection.

use std::{
    net::Shutdown,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use crate::{
    io::socket,
    log,
    proto::{
        frame::{ErrorCode, ErrorFrame, Frame},
        session::export::Reset,
    },
};

use super::Sender;

impl Sender<'_> {
    /// The kernel held an untethered export's zero-copy send past the pin
    /// deadline: count it, say so, and end the connection by reset.
    pub(super) fn on_pin_deadline(&mut self, r: Reset) {
        self.report_counters(r.stream);
        let what = self
            .set
            .streams
            .get(&r.stream)
            .map_or_else(String::new, |st| {
                format!("{}/{}", st.ring.topic, st.ring.publisher)
            });
        let message = format!(
            "the kernel held zero-copy sends of {what} for {} ms, past the pin deadline of {} ms; resetting the connection to release them",
            r.held_for / 1_000_000,
            self.shared.config.send.pin_deadline.as_millis()
        );
        log::warning!("peer {}: {message}", self.peer.name);
        self.link.close(message, false);
    }

    /// Ends the connection: last frames out, socket shut, the kernel done
    /// with our zero-copy sends, and the streams' protection reset.
    pub(super) fn finish(&mut self, reset: bool) {
        let fd = self.wire.sock.as_raw_fd();
        if reset {
            // Drop what the kernel still queues (the write queue is purged,
            // the peer gets a RST); completions follow.
            let _ = socket::tcp_disconnect(fd);
        } else {
            self.wire.set_control_timeout(Duration::from_secs(1));
            for f in std::mem::take(&mut self.link.queues().frames_out) {
                self.wire.queue_encoded(&f);
            }
            if self.shared.stopping() {
                self.wire.queue(&Frame::Error(ErrorFrame {
                    code: ErrorCode::Shutdown,
                    message: "bridge shutting down",
                }));
                self.link.close("this bridge is shutting down", false);
            }
            let _ = self.wire.flush();
        }
        let _ = self.wire.sock.stream().shutdown(Shutdown::Both);
        // A graceful wait for completions holds pins of untethered exports:
        // never longer than their deadline.
        let graceful = Duration::from_secs(1).min(self.shared.config.send.pin_deadline);
        let deadline = Instant::now() + graceful;
        while self.wire.sock.tracker().in_flight() > 0 && Instant::now() < deadline {
            if self
                .wire
                .sock
                .wait_completions(Duration::from_millis(50))
                .is_err()
            {
                break;
            }
        }
        if self.wire.sock.tracker().in_flight() > 0 {
            let _ = socket::tcp_disconnect(fd);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.wire.sock.tracker().in_flight() > 0 && Instant::now() < deadline {
                if self
                    .wire
                    .sock
                    .wait_completions(Duration::from_millis(100))
                    .is_err()
                {
                    break;
                }
            }
        }
        let left = self.wire.sock.tracker().in_flight();
        if left > 0 {
            // Releasing these is sound: the connection was reset, so the
            // kernel purged the socket's write queue and no byte of them
            // reaches the peer on this connection. Should the kernel still
            // hold a reference to a page (a clone in a driver queue), it
            // holds the page itself: its memory stays valid for the kernel
            // whatever the publisher does, so the worst case is that other
            // bytes than the ones sealed go to a connection that no longer
            // exists, and a peer would refuse them (the frame's tag covers
            // the bytes as they were). Never a memory-safety issue for us.
            log::warning!(
                "{left} zero-copy sends to {} were never confirmed by the kernel; releasing them after the reset",
                self.peer.name
            );
        }
        self.report_zc();
        self.set.session.on_connection_closed();
        let ids: Vec<u32> = self.set.streams.keys().copied().collect();
        for id in ids {
            self.protect(id);
            self.report_counters(id);
        }
    }
}
