//! The measurement loops, written once and run over every system's channels,
//! so every system does the same payload work and waits the same way.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cell::{self, Role, RoleArgs};
use crate::os::{involuntary_switches, now_ns};
use crate::payload::END;
use crate::transport::{retry_until, ChannelSpec, Rx, System, Tx, Wait};

/// How long a rendezvous (`open_*`, waiting for peers to finish) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Receives one message with the row's waiting policy.
#[inline]
pub fn recv(rx: &mut dyn Rx, wait: Wait) -> Result<u64> {
    if wait == Wait::Block {
        return rx.recv_blocking();
    }
    loop {
        if let Some(seq) = rx.try_recv()? {
            return Ok(seq);
        }
        wait.idle();
    }
}

/// Ping-pong initiator: warms up for `warmup_ms`, then records round-trip
/// times until `measure_ms` elapsed or `max_iters` were recorded, then sends
/// [`END`]. Returns the recorded RTTs in nanoseconds.
pub fn pingpong_leader(
    tx: &mut dyn Tx,
    rx: &mut dyn Rx,
    wait: Wait,
    timing: &cell::Timing,
) -> Result<Vec<u64>> {
    let cap = usize::try_from(timing.max_iters).unwrap_or(usize::MAX);
    let mut samples = Vec::with_capacity(cap.min(1 << 22));
    let mut seq = 0u64;
    let mut round_trip = |seq: u64| -> Result<u64> {
        let t0 = now_ns();
        tx.send(seq)?;
        let got = recv(rx, wait)?;
        let t1 = now_ns();
        if got != seq {
            bail!("ping-pong reply carried message {got}, expected {seq}");
        }
        Ok(t1.saturating_sub(t0))
    };
    let warm_end = now_ns() + timing.warmup_ms * 1_000_000;
    loop {
        round_trip(seq)?;
        seq += 1;
        if now_ns() >= warm_end {
            break;
        }
    }
    let end = now_ns() + timing.measure_ms * 1_000_000;
    while samples.len() < cap {
        samples.push(round_trip(seq)?);
        seq += 1;
        if now_ns() >= end {
            break;
        }
    }
    tx.send(END)?;
    Ok(samples)
}

/// Ping-pong echoer: replies to every message with the same sequence number
/// (a full payload written anew) until [`END`]. Returns the messages echoed.
pub fn pingpong_follower(rx: &mut dyn Rx, tx: &mut dyn Tx, wait: Wait) -> Result<u64> {
    let mut expected = 0u64;
    loop {
        let seq = recv(rx, wait)?;
        if seq == END {
            return Ok(expected);
        }
        if seq != expected {
            bail!("ping-pong: received message {seq}, expected {expected}");
        }
        tx.send(seq)?;
        expected += 1;
    }
}

/// Stream sender: `warmup_msgs` messages, then as many as it can for
/// `measure_ms`, then [`END`]. Returns the number of messages sent (without END).
pub fn stream_sender(tx: &mut dyn Tx, timing: &cell::Timing) -> Result<u64> {
    let mut seq = 0u64;
    while seq < timing.warmup_msgs {
        tx.send(seq)?;
        seq += 1;
    }
    let end = now_ns() + timing.measure_ms * 1_000_000;
    loop {
        // Check the clock every 64 messages so the clock read is not part of
        // the per-message cost being measured.
        for _ in 0..64 {
            tx.send(seq)?;
            seq += 1;
        }
        if now_ns() >= end {
            break;
        }
    }
    tx.send(END)?;
    Ok(seq)
}

/// What a stream receiver measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamResult {
    /// Clock when the last warm-up message arrived.
    pub t0_ns: u64,
    /// Clock when [`END`] arrived.
    pub t1_ns: u64,
    /// Messages received in `(t0, t1]`, END included (it carries a full payload).
    pub count: u64,
}

/// Stream receiver: checks every message and their order, starts the clock at
/// the last warm-up message and stops it at [`END`].
pub fn stream_receiver(rx: &mut dyn Rx, wait: Wait, warmup_msgs: u64) -> Result<StreamResult> {
    if warmup_msgs == 0 {
        bail!("stream receivers need at least one warm-up message to start the clock");
    }
    let mut expected = 0u64;
    let mut t0 = None;
    loop {
        let seq = recv(rx, wait)?;
        if seq == END {
            let t1 = now_ns();
            let Some(t0) = t0 else {
                bail!("stream ended after {expected} messages, before the warm-up was over");
            };
            return Ok(StreamResult {
                t0_ns: t0,
                t1_ns: t1,
                count: expected - (warmup_msgs - 1),
            });
        }
        if seq != expected {
            bail!("stream: received message {seq}, expected {expected}");
        }
        if seq == warmup_msgs - 1 {
            t0 = Some(now_ns());
        }
        expected += 1;
    }
}

fn spec(args: &RoleArgs, name: &str) -> ChannelSpec {
    ChannelSpec {
        dir: args.dir.clone(),
        name: name.to_owned(),
        run_id: args.run_id.clone(),
        msg_len: args.cell.size,
        depth: args.cell.bench.depth(),
        receivers: if args.cell.bench.is_pingpong() {
            1
        } else {
            args.cell.receivers
        },
        wait: args.cell.bench.wait(),
        stream: !args.cell.bench.is_pingpong(),
        connect_timeout: CONNECT_TIMEOUT,
    }
}

fn mark(path: &std::path::Path) -> Result<()> {
    std::fs::write(path, b"").with_context(|| format!("creating {}", path.display()))
}

/// Waits until every follower created its marker (`path_of` names it).
fn wait_for_followers(
    args: &RoleArgs,
    followers: usize,
    what: &str,
    path_of: fn(&std::path::Path, Role) -> std::path::PathBuf,
) -> Result<()> {
    for i in 0..followers {
        let path = path_of(&args.dir, Role::Follower(i));
        retry_until(CONNECT_TIMEOUT, &format!("follower {i} to {what}"), || {
            Ok(path.exists().then_some(()))
        })?;
    }
    Ok(())
}

/// Runs the role described by `args` over `system` (already pinned).
pub fn run_role(args: &RoleArgs, system: &dyn System) -> Result<()> {
    let bench = args.cell.bench;
    let wait = bench.wait();
    match (bench.is_pingpong(), args.role) {
        (true, Role::Leader) => {
            let mut tx = system
                .open_tx(&spec(args, "ping"))
                .context("opening ping sender")?;
            let mut rx = system
                .open_rx(&spec(args, "pong"), 0)
                .context("opening pong receiver")?;
            let before = involuntary_switches();
            let mut samples = pingpong_leader(tx.as_mut(), rx.as_mut(), wait, &args.timing)?;
            let preempted = involuntary_switches() - before;
            // Keep the channels open until the follower is finished, so no
            // system can drop a message still queued when the sender exits.
            wait_for_followers(args, 1, "finish", cell::done_path)?;
            samples.shrink_to_fit();
            let mut bytes = Vec::with_capacity(samples.len() * 8);
            for s in &samples {
                bytes.write_all(&s.to_le_bytes())?;
            }
            let path = cell::samples_path(&args.dir);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            cell::write_result(
                &args.dir,
                args.role,
                &[("samples", samples.len() as u64), ("preempted", preempted)],
            )?;
        }
        (true, Role::Follower(_)) => {
            let mut rx = system
                .open_rx(&spec(args, "ping"), 0)
                .context("opening ping receiver")?;
            let mut tx = system
                .open_tx(&spec(args, "pong"))
                .context("opening pong sender")?;
            let before = involuntary_switches();
            let echoed = pingpong_follower(rx.as_mut(), tx.as_mut(), wait)?;
            let preempted = involuntary_switches() - before;
            cell::write_result(
                &args.dir,
                args.role,
                &[("echoed", echoed), ("preempted", preempted)],
            )?;
        }
        (false, Role::Leader) => {
            let mut tx = system
                .open_tx(&spec(args, "data"))
                .context("opening stream sender")?;
            // Start only when every receiver is attached and ready to poll, so
            // no system sees a full queue towards a receiver still starting up.
            wait_for_followers(args, args.cell.receivers, "get ready", cell::ready_path)?;
            let before = involuntary_switches();
            let sent = stream_sender(tx.as_mut(), &args.timing)?;
            let preempted = involuntary_switches() - before;
            wait_for_followers(args, args.cell.receivers, "finish", cell::done_path)?;
            cell::write_result(
                &args.dir,
                args.role,
                &[("sent", sent), ("preempted", preempted)],
            )?;
        }
        (false, Role::Follower(i)) => {
            let mut rx = system
                .open_rx(&spec(args, "data"), i)
                .with_context(|| format!("opening stream receiver {i}"))?;
            mark(&cell::ready_path(&args.dir, args.role))?;
            let before = involuntary_switches();
            let r = stream_receiver(rx.as_mut(), wait, args.timing.warmup_msgs)?;
            let preempted = involuntary_switches() - before;
            cell::write_result(
                &args.dir,
                args.role,
                &[
                    ("t0_ns", r.t0_ns),
                    ("t1_ns", r.t1_ns),
                    ("count", r.count),
                    ("preempted", preempted),
                ],
            )?;
        }
    }
    mark(&cell::done_path(&args.dir, args.role))
}
