//! `fault-proxy`: a TCP proxy for tests that delays, throttles, stalls and
//! cuts the connections it forwards.
//!
//! ```text
//! fault-proxy --listen ADDR --upstream ADDR [--delay-ms MS]
//!     [--throttle-bytes-per-sec B] [--cut-after-bytes N] [--cut-every-bytes N]
//!     [--cut-mode rst|fin] [--max-conns K] [--frames]
//! ```
//!
//! Each connection accepted on `--listen` (side A, the client) gets its own
//! connection to `--upstream` (side B). Both directions are forwarded by their
//! own reader and writer threads with blocking sockets:
//!
//! - `--delay-ms`: every chunk is held until `delay` after it was read (one
//!   way; a round trip gains twice the delay). Pipelined: throughput is not
//!   divided by the delay (up to 1 MiB in flight per direction).
//! - `--throttle-bytes-per-sec`: each direction of each connection is paced
//!   to this rate in pieces of 1/50 s worth of data (0: off).
//! - `--cut-after-bytes N`: once `N` bytes in total have been forwarded A→B
//!   (counted over all connections), the connection carrying byte `N` is cut
//!   right after it, in both directions: the upstream receives exactly the
//!   first `N` bytes (the proxy waits up to 2 s for them to be acknowledged),
//!   so a frame straddling `N` arrives cut in half. One-shot.
//! - `--cut-every-bytes N`: the same at every multiple of `N`, so a client
//!   that reconnects is cut again after each further `N` bytes.
//! - `--cut-mode`: `rst` (default) closes both sockets with a reset; `fin`
//!   shuts both down (the peers see EOF after the data already forwarded).
//! - `--max-conns`: connections beyond this many live ones are refused.
//! - `--frames`: the A→B stream is a shmbus bridge connection; it is
//!   forwarded frame by frame (the first two frames, HELLO and NOISE, as
//!   they are; every later frame is header + body + 16-byte tag), so the
//!   `inject`, `replay` and `reorder` commands can act at frame boundaries,
//!   as an on-path attacker without the keys would.
//!
//! Only loopback and private addresses (10/8, 172.16/12, 192.168/16,
//! 100.64/10, fc00::/7) are accepted for `--listen` and `--upstream`, and
//! names are not resolved: the proxy can only serve a test's own sockets.
//!
//! Control: one command per stdin line, answered `ok <line>` once it took
//! effect, or `error <why>`:
//!
//! - `cut [rst|fin]`: cut every live connection now (default mode);
//! - `pause` / `resume`: stop forwarding (data queues, then the senders'
//!   windows fill) / go on;
//! - `delay MS`, `throttle BYTES_PER_SEC` (0: off): change the settings;
//! - `down`: cut every connection and refuse new ones until `up`;
//! - `stats`: print `stats conns=<live> a2b=<n> b2a=<n> cuts=<n>`;
//! - `inject` / `replay` / `reorder` (with `--frames`): on the next A→B
//!   frame boundary of any connection, insert a forged HEARTBEAT with a zero
//!   tag / send the next frame twice / swap the next two frames; printed as
//!   `tampered conn=<id> kind=<kind> frame=<index>` when done;
//! - `quit`: exit 0.
//!
//! Stdout lines: `listening <addr>` at start, `open conn=<id> from=<addr>`,
//! `cut conn=<id> reason=<after-bytes|every-bytes|command|down> mode=<m>
//! a2b=<n> b2a=<n> total_a2b=<n>`, `reset conn=<id> reason=<error>` (a peer
//! reset or a socket error, passed on as a reset to the other side),
//! `closed conn=<id> a2b=<n> b2a=<n>` (both directions ended by EOF),
//! `refused from=<addr> reason=<down|max-conns|upstream: error>`. Usage errors
//! exit 2, a failed bind 1. The proxy dies with its parent
//! (`PR_SET_PDEATHSIG`); EOF on stdin only ends the control channel.

use std::{
    io::{self, BufRead, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc::{sync_channel, Receiver, SyncSender},
        Arc, Condvar, Mutex, MutexGuard, Weak,
    },
    thread,
    time::{Duration, Instant},
};

use shmbus_tests::args::Args;

/// Largest chunk read at once.
const CHUNK: usize = 16 * 1024;
/// Chunks queued per direction between reader and writer (bounds memory and
/// the data in flight under `--delay-ms`).
const QUEUE: usize = 64;
/// Socket timeout used to poll for cuts while blocked in read or write.
const POLL: Duration = Duration::from_millis(50);
/// How long a byte-count cut waits for the forwarded bytes to be acked.
const DRAIN: Duration = Duration::from_secs(2);
/// Timeout connecting upstream.
const CONNECT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let config = match Args::parse(std::env::args().skip(1), &["frames"])
        .and_then(Config::from_args)
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fault-proxy: {e}\nusage: fault-proxy --listen ADDR --upstream ADDR [--delay-ms MS] [--throttle-bytes-per-sec B] [--cut-after-bytes N] [--cut-every-bytes N] [--cut-mode rst|fin] [--max-conns K] [--frames]");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(config.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fault-proxy: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(1);
        }
    };
    let shared = Arc::new(Shared::new(&config));
    match listener.local_addr() {
        Ok(addr) => say(&format!("listening {addr}")),
        Err(e) => {
            eprintln!("fault-proxy: local_addr: {e}");
            return ExitCode::from(1);
        }
    }
    let control = shared.clone();
    thread::spawn(move || control_loop(&control));
    accept_loop(&listener, &shared, &config);
    ExitCode::SUCCESS
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutMode {
    Rst,
    Fin,
}

impl CutMode {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "rst" => Ok(Self::Rst),
            "fin" => Ok(Self::Fin),
            other => Err(format!("cut mode {other:?} is not rst or fin")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rst => "rst",
            Self::Fin => "fin",
        }
    }
}

#[derive(Debug)]
struct Config {
    listen: SocketAddr,
    upstream: SocketAddr,
    delay_ms: u64,
    rate: u64,
    cut_after: Option<u64>,
    cut_every: Option<u64>,
    cut_mode: CutMode,
    max_conns: usize,
    frames: bool,
}

impl Config {
    fn from_args(mut args: Args) -> Result<Self, String> {
        let positive = |name: &str, v: Option<u64>| match v {
            Some(0) => Err(format!("--{name} must be above 0")),
            v => Ok(v),
        };
        let config = Self {
            listen: args.req("listen")?,
            upstream: args.req("upstream")?,
            delay_ms: args.or("delay-ms", 0)?,
            rate: args.or("throttle-bytes-per-sec", 0)?,
            cut_after: positive("cut-after-bytes", args.opt("cut-after-bytes")?)?,
            cut_every: positive("cut-every-bytes", args.opt("cut-every-bytes")?)?,
            cut_mode: CutMode::parse(&args.or("cut-mode", "rst".to_string())?)?,
            max_conns: args.or("max-conns", 64)?,
            frames: args.flag("frames"),
        };
        args.finish()?;
        for (name, addr) in [("listen", config.listen), ("upstream", config.upstream)] {
            if !is_test_address(addr.ip()) {
                return Err(format!(
                    "--{name} {addr}: only loopback and private addresses are served"
                ));
            }
        }
        Ok(config)
    }
}

/// Loopback or private: addresses a test can own.
fn is_test_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            let [a, b, ..] = v.octets();
            v.is_loopback() || v.is_private() || (a == 100 && (b & 0xc0) == 64)
        }
        IpAddr::V6(v) => v.is_loopback() || (v.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Settings the control channel changes; guarded by `Shared::settings`.
#[derive(Debug)]
struct Settings {
    delay: Duration,
    rate: u64,
    paused: bool,
    down: bool,
}

/// Where the A→B byte stream gets cut, over all connections.
#[derive(Debug)]
struct CutPlan {
    pos: u64,
    after: Option<u64>,
    every: Option<u64>,
    next: Option<u64>,
}

impl CutPlan {
    fn new(after: Option<u64>, every: Option<u64>) -> Self {
        let mut plan = Self {
            pos: 0,
            after,
            every,
            next: None,
        };
        plan.next = plan.point_after(0);
        plan
    }

    /// The first cut point beyond `pos`.
    fn point_after(&self, pos: u64) -> Option<u64> {
        let after = self.after.filter(|&a| a > pos);
        let every = self
            .every
            .and_then(|e| (pos / e).checked_add(1)?.checked_mul(e));
        match (after, every) {
            (Some(a), Some(e)) => Some(a.min(e)),
            (a, e) => a.or(e),
        }
    }

    /// Takes up to `len` bytes from the stream: how many may be forwarded,
    /// and the cut reason if the connection must be cut right after them.
    fn reserve(&mut self, len: usize) -> (usize, Option<&'static str>) {
        let Some(next) = self.next else {
            self.pos = self.pos.saturating_add(len as u64);
            return (len, None);
        };
        let room = next - self.pos;
        let take = room.min(len as u64);
        self.pos += take;
        if self.pos < next {
            return (take as usize, None);
        }
        let reason = if self.after == Some(next) {
            "after-bytes"
        } else {
            "every-bytes"
        };
        self.next = self.point_after(next);
        (take as usize, Some(reason))
    }
}

#[derive(Debug)]
struct Shared {
    settings: Mutex<Settings>,
    /// Notified when settings change or a connection dies.
    changed: Condvar,
    plan: Mutex<CutPlan>,
    conns: Mutex<Vec<Weak<Conn>>>,
    cut_mode: CutMode,
    /// Statistics (cuts, bytes forwarded each way over all connections).
    /// Relaxed throughout: nothing else is published through them, and a
    /// test reads them only after learning of the events through this
    /// process's stdout and stdin (system calls on both sides).
    cuts: AtomicU64,
    a2b: AtomicU64,
    b2a: AtomicU64,
    /// `--frames`: forward A→B frame by frame.
    frames: bool,
    /// The tampering to do at the next A→B frame boundary.
    tamper: Mutex<Option<Tamper>>,
}

/// What an on-path attacker does to the A→B frames (`--frames`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    /// A forged HEARTBEAT (no entries) with an all-zero tag, before the next frame.
    Inject,
    /// The next frame, sent twice.
    Replay,
    /// The next two frames, swapped.
    Reorder,
}

impl Tamper {
    fn name(self) -> &'static str {
        match self {
            Self::Inject => "inject",
            Self::Replay => "replay",
            Self::Reorder => "reorder",
        }
    }
}

/// Splits a bridge connection's A→B byte stream into frames.
#[derive(Debug, Default)]
struct FrameSplitter {
    buf: Vec<u8>,
    /// Frames split so far (HELLO is 0, NOISE 1, then sealed frames).
    index: u64,
}

impl FrameSplitter {
    /// Frames HELLO and NOISE carry no tag; every later frame does.
    const UNSEALED: u64 = 2;
    const TAG: usize = 16;

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if buffered.
    fn next(&mut self) -> Option<Vec<u8>> {
        let header = self.buf.get(..8)?;
        let body = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let tag = if self.index >= Self::UNSEALED {
            Self::TAG
        } else {
            0
        };
        let len = 8 + body + tag;
        if self.buf.len() < len {
            return None;
        }
        self.index += 1;
        Some(self.buf.drain(..len).collect())
    }
}

/// A HEARTBEAT frame with no entries and a zero tag: well formed, but
/// made without the session key.
fn forged_heartbeat() -> Vec<u8> {
    let mut f = vec![b'S', b'B', 9, 0, 2, 0, 0, 0, 0, 0];
    f.extend([0u8; FrameSplitter::TAG]);
    f
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn new(config: &Config) -> Self {
        Self {
            settings: Mutex::new(Settings {
                delay: Duration::from_millis(config.delay_ms),
                rate: config.rate,
                paused: false,
                down: false,
            }),
            changed: Condvar::new(),
            plan: Mutex::new(CutPlan::new(config.cut_after, config.cut_every)),
            conns: Mutex::new(Vec::new()),
            cut_mode: config.cut_mode,
            cuts: AtomicU64::new(0),
            a2b: AtomicU64::new(0),
            b2a: AtomicU64::new(0),
            frames: config.frames,
            tamper: Mutex::new(None),
        }
    }

    fn live(&self) -> Vec<Arc<Conn>> {
        let mut conns = lock(&self.conns);
        conns.retain(|w| w.upgrade().is_some_and(|c| !c.dead.load(Ordering::Acquire)));
        conns.iter().filter_map(Weak::upgrade).collect()
    }

    fn notify(&self) {
        // Taking the lock orders this wake-up after any waiter's check.
        let _guard = lock(&self.settings);
        self.changed.notify_all();
    }

    /// Waits until forwarding is allowed: not paused, and `not_before`
    /// (delay, pacing; computed from the settings) has passed. False if the
    /// connection died meanwhile.
    fn wait_ready(&self, conn: &Conn, not_before: impl Fn(&Settings) -> Instant) -> bool {
        let mut s = lock(&self.settings);
        loop {
            // Acquire pairs with the Release store in `Conn::kill`.
            if conn.dead.load(Ordering::Acquire) {
                return false;
            }
            let now = Instant::now();
            let at = not_before(&s);
            if !s.paused && now >= at {
                return true;
            }
            s = if s.paused {
                self.changed.wait(s).unwrap_or_else(|p| p.into_inner())
            } else {
                match self.changed.wait_timeout(s, at - now) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                }
            };
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    A2B,
    B2A,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    client: TcpStream,
    upstream: TcpStream,
    dead: AtomicBool,
    /// Bytes forwarded each way; statistics for the log lines, Relaxed as
    /// in [`Shared`] (the `closed` line reads them after `finished`'s
    /// AcqRel, so it sees both writers' counts).
    a2b: AtomicU64,
    b2a: AtomicU64,
    /// Directions that ended by EOF.
    finished: AtomicU32,
}

impl Conn {
    fn ends(&self, dir: Dir) -> (&TcpStream, &TcpStream) {
        match dir {
            Dir::A2B => (&self.client, &self.upstream),
            Dir::B2A => (&self.upstream, &self.client),
        }
    }

    fn counter(&self, dir: Dir) -> &AtomicU64 {
        match dir {
            Dir::A2B => &self.a2b,
            Dir::B2A => &self.b2a,
        }
    }

    /// Marks the connection dead; false if it already was.
    fn kill(&self, shared: &Shared) -> bool {
        // Release pairs with the Acquire loads in the forwarding threads.
        let first = !self.dead.swap(true, Ordering::AcqRel);
        if first {
            shared.notify();
        }
        first
    }

    /// An injected cut. `drain`: first wait for the bytes already written
    /// upstream to be acknowledged, so the upstream got all of them.
    fn cut(&self, shared: &Shared, reason: &str, mode: CutMode, drain: bool) {
        if self.dead.load(Ordering::Acquire) {
            return;
        }
        if drain {
            wait_sent(&self.upstream, DRAIN);
        }
        if !self.kill(shared) {
            return;
        }
        shared.cuts.fetch_add(1, Ordering::Relaxed);
        say(&format!(
            "cut conn={} reason={reason} mode={} a2b={} b2a={} total_a2b={}",
            self.id,
            mode.name(),
            self.a2b.load(Ordering::Relaxed),
            self.b2a.load(Ordering::Relaxed),
            lock(&shared.plan).pos,
        ));
        self.close(mode);
    }

    /// A reset or error on one side: reset the other.
    fn fail(&self, shared: &Shared, why: &io::Error) {
        if self.kill(shared) {
            say(&format!("reset conn={} reason={why}", self.id));
            self.close(CutMode::Rst);
        }
    }

    /// `Fin`: shut both sockets down now. `Rst`: set linger 0 so the close
    /// when the last thread lets go of the connection sends a reset (the
    /// threads notice `dead` within [`POLL`]).
    fn close(&self, mode: CutMode) {
        for s in [&self.client, &self.upstream] {
            match mode {
                CutMode::Fin => {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
                CutMode::Rst => set_linger_zero(s),
            }
        }
    }

    /// One direction ended by EOF; the second one closes the connection.
    /// It counts as gone (`dead`) before `closed` is said: a `stats` asked
    /// after that line must not count it live while its threads are still
    /// letting go of it (a flake in `netns_infra` before).
    fn finish(&self) {
        // AcqRel: the second finisher sees the first one's counters; the
        // swap (AcqRel) marks the connection gone for `live`'s Acquire load,
        // unless a cut killed it first (then the cut was said instead).
        if self.finished.fetch_add(1, Ordering::AcqRel) == 1
            && !self.dead.swap(true, Ordering::AcqRel)
        {
            say(&format!(
                "closed conn={} a2b={} b2a={}",
                self.id,
                self.a2b.load(Ordering::Relaxed),
                self.b2a.load(Ordering::Relaxed)
            ));
        }
    }
}

fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a live local
    // of that type, on an fd `s` keeps open.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Waits until `s` has no unacknowledged bytes (`SIOCOUTQ` 0), at most
/// `limit`.
fn wait_sent(s: &TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int through the pointer,
        // which points at a live local; the fd is kept open by `s`.
        let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if rc != 0 || queued == 0 {
            return rc == 0;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, config: &Config) {
    let mut next_id = 1;
    for incoming in listener.incoming() {
        let client = match incoming {
            Ok(c) => c,
            Err(e) => {
                eprintln!("fault-proxy: accept: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let from = client
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let refuse = |why: &str| {
            set_linger_zero(&client);
            say(&format!("refused from={from} reason={why}"));
        };
        if lock(&shared.settings).down {
            refuse("down");
            continue;
        }
        if shared.live().len() >= config.max_conns {
            refuse("max-conns");
            continue;
        }
        let upstream = match TcpStream::connect_timeout(&config.upstream, CONNECT) {
            Ok(u) => u,
            Err(e) => {
                refuse(&format!("upstream: {e}"));
                continue;
            }
        };
        if let Err(e) = prepare(&client).and_then(|()| prepare(&upstream)) {
            refuse(&format!("socket setup: {e}"));
            continue;
        }
        let conn = Arc::new(Conn {
            id: next_id,
            client,
            upstream,
            dead: AtomicBool::new(false),
            a2b: AtomicU64::new(0),
            b2a: AtomicU64::new(0),
            finished: AtomicU32::new(0),
        });
        next_id += 1;
        lock(&shared.conns).push(Arc::downgrade(&conn));
        say(&format!("open conn={} from={from}", conn.id));
        for dir in [Dir::A2B, Dir::B2A] {
            let (tx, rx) = sync_channel(QUEUE);
            let (c, s) = (conn.clone(), shared.clone());
            thread::spawn(move || read_side(&c, &s, dir, &tx));
            let (c, s) = (conn.clone(), shared.clone());
            thread::spawn(move || write_side(&c, &s, dir, &rx));
        }
    }
}

/// No Nagle (the proxy must not add delay of its own) and short timeouts so
/// blocked threads notice cuts.
fn prepare(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(POLL))?;
    s.set_write_timeout(Some(POLL))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

type Chunk = (Instant, Vec<u8>);

fn read_side(conn: &Conn, shared: &Shared, dir: Dir, tx: &SyncSender<Chunk>) {
    let (mut src, _) = conn.ends(dir);
    let mut buf = vec![0u8; CHUNK];
    let mut splitter = (shared.frames && dir == Dir::A2B).then(FrameSplitter::default);
    // A frame held back by `reorder`.
    let mut held: Option<Vec<u8>> = None;
    loop {
        // Acquire pairs with the Release store in `Conn::kill`.
        if conn.dead.load(Ordering::Acquire) {
            return;
        }
        match src.read(&mut buf) {
            Ok(0) => return, // EOF: dropping `tx` tells the writer.
            Ok(n) => {
                let Some(split) = splitter.as_mut() else {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        return;
                    }
                    continue;
                };
                split.push(&buf[..n]);
                while let Some(frame) = split.next() {
                    let index = split.index - 1;
                    let mut out = Vec::new();
                    if let Some(first) = held.take() {
                        // `reorder`: this frame goes before the held one.
                        out.push(frame);
                        out.push(first);
                        say(&format!(
                            "tampered conn={} kind=reorder frame={}",
                            conn.id,
                            index - 1
                        ));
                    } else {
                        // Not the key confirmation (the first sealed frame):
                        // the connection must be established first.
                        let tamper = if index > FrameSplitter::UNSEALED {
                            lock(&shared.tamper).take()
                        } else {
                            None
                        };
                        match tamper {
                            None => out.push(frame),
                            Some(Tamper::Reorder) => held = Some(frame),
                            Some(t @ Tamper::Inject) => {
                                out.push(forged_heartbeat());
                                out.push(frame);
                                say(&format!(
                                    "tampered conn={} kind={} frame={index}",
                                    conn.id,
                                    t.name()
                                ));
                            }
                            Some(t @ Tamper::Replay) => {
                                out.push(frame.clone());
                                out.push(frame);
                                say(&format!(
                                    "tampered conn={} kind={} frame={index}",
                                    conn.id,
                                    t.name()
                                ));
                            }
                        }
                    }
                    for f in out {
                        if tx.send((Instant::now(), f)).is_err() {
                            return;
                        }
                    }
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                conn.fail(shared, &e);
                return;
            }
        }
    }
}

fn write_side(conn: &Conn, shared: &Shared, dir: Dir, rx: &Receiver<Chunk>) {
    let mut next_free = Instant::now();
    loop {
        let (read_at, data) = match rx.recv_timeout(POLL) {
            Ok(chunk) => chunk,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Acquire pairs with the Release store in `Conn::kill`.
                if conn.dead.load(Ordering::Acquire) {
                    return;
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut off = 0;
        while off < data.len() {
            let ready = shared.wait_ready(conn, |s| {
                let due = read_at + s.delay;
                if s.rate > 0 {
                    due.max(next_free)
                } else {
                    due
                }
            });
            if !ready {
                return;
            }
            let rate = lock(&shared.settings).rate;
            let mut piece = data.len() - off;
            if rate > 0 {
                piece = piece.min((rate / 50).clamp(1, CHUNK as u64) as usize);
            }
            let (take, cut) = match dir {
                Dir::A2B => lock(&shared.plan).reserve(piece),
                Dir::B2A => (piece, None),
            };
            if let Err(e) = write_all(conn, dir, &data[off..off + take]) {
                if !conn.dead.load(Ordering::Acquire) {
                    conn.fail(shared, &e);
                }
                return;
            }
            conn.counter(dir).fetch_add(take as u64, Ordering::Relaxed);
            match dir {
                Dir::A2B => &shared.a2b,
                Dir::B2A => &shared.b2a,
            }
            .fetch_add(take as u64, Ordering::Relaxed);
            if let Some(reason) = cut {
                conn.cut(shared, reason, shared.cut_mode, true);
                return;
            }
            if rate > 0 {
                let spent = Duration::from_secs_f64(take as f64 / rate as f64);
                next_free = next_free.max(Instant::now()) + spent;
            }
            off += take;
        }
    }
    // The source ended: pass the half-close on.
    if !conn.dead.load(Ordering::Acquire) {
        let (_, dst) = conn.ends(dir);
        let _ = dst.shutdown(std::net::Shutdown::Write);
        conn.finish();
    }
}

/// Writes all of `data`, retrying on the poll timeout; fails with
/// `ConnectionAborted` if the connection is cut meanwhile.
fn write_all(conn: &Conn, dir: Dir, mut data: &[u8]) -> io::Result<()> {
    let (_, mut dst) = conn.ends(dir);
    while !data.is_empty() {
        // Acquire pairs with the Release store in `Conn::kill`.
        if conn.dead.load(Ordering::Acquire) {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        match dst.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn control_loop(shared: &Shared) {
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match command(shared, line) {
            Ok(Some(reply)) => say(&reply),
            Ok(None) => say(&format!("ok {line}")),
            Err(e) => say(&format!("error {e}")),
        }
    }
}

fn cut_all(shared: &Shared, reason: &str, mode: CutMode) -> usize {
    let live = shared.live();
    for c in &live {
        c.cut(shared, reason, mode, false);
    }
    live.len()
}

/// Runs one control command; `Ok(Some(line))` replaces the `ok` reply.
fn command(shared: &Shared, line: &str) -> Result<Option<String>, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or_default();
    let arg = words.next();
    if words.next().is_some() {
        return Err(format!("too many words in {line:?}"));
    }
    let number = || -> Result<u64, String> {
        arg.ok_or_else(|| format!("{verb} needs a number"))?
            .parse()
            .map_err(|_| format!("{verb}: {arg:?} is not a number"))
    };
    let set = |f: &dyn Fn(&mut Settings)| {
        f(&mut lock(&shared.settings));
        shared.changed.notify_all();
    };
    match (verb, arg) {
        ("cut", mode) => {
            let mode = mode.map_or(Ok(shared.cut_mode), CutMode::parse)?;
            let n = cut_all(shared, "command", mode);
            return Ok(Some(format!("ok {line} conns={n}")));
        }
        ("pause", None) => set(&|s| s.paused = true),
        ("resume", None) => set(&|s| s.paused = false),
        ("delay", _) => {
            let ms = number()?;
            set(&|s| s.delay = Duration::from_millis(ms));
        }
        ("throttle", _) => {
            let rate = number()?;
            set(&|s| s.rate = rate);
        }
        ("down", None) => {
            set(&|s| s.down = true);
            cut_all(shared, "down", shared.cut_mode);
        }
        ("up", None) => set(&|s| s.down = false),
        ("inject" | "replay" | "reorder", None) => {
            if !shared.frames {
                return Err(format!("{verb} needs --frames"));
            }
            let t = match verb {
                "inject" => Tamper::Inject,
                "replay" => Tamper::Replay,
                _ => Tamper::Reorder,
            };
            *lock(&shared.tamper) = Some(t);
        }
        ("stats", None) => {
            return Ok(Some(format!(
                "stats conns={} a2b={} b2a={} cuts={}",
                shared.live().len(),
                shared.a2b.load(Ordering::Relaxed),
                shared.b2a.load(Ordering::Relaxed),
                shared.cuts.load(Ordering::Relaxed)
            )))
        }
        ("quit", None) => {
            say("ok quit");
            std::process::exit(0);
        }
        _ => return Err(format!("unknown command {line:?}")),
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_plan_points() {
        let mut p = CutPlan::new(Some(10), None);
        assert_eq!(p.reserve(4), (4, None));
        assert_eq!(p.reserve(100), (6, Some("after-bytes")));
        assert_eq!(p.reserve(100), (100, None));

        let mut p = CutPlan::new(None, Some(8));
        assert_eq!(p.reserve(20), (8, Some("every-bytes")));
        assert_eq!(p.reserve(3), (3, None));
        assert_eq!(p.reserve(20), (5, Some("every-bytes")));
        assert_eq!(p.pos, 16);

        let mut p = CutPlan::new(Some(5), Some(8));
        assert_eq!(p.reserve(20), (5, Some("after-bytes")));
        assert_eq!(p.reserve(20), (3, Some("every-bytes")));
        assert_eq!(p.reserve(20), (8, Some("every-bytes")));
    }

    #[test]
    fn frames_are_split_with_tags_after_the_handshake() {
        let mut s = FrameSplitter::default();
        let hello = [b'S', b'B', 1, 0, 3, 0, 0, 0, 1, 2, 3];
        let noise = [b'S', b'B', 12, 0, 1, 0, 0, 0, 9];
        let mut sealed = forged_heartbeat();
        sealed[10] = 7; // first tag byte
        let mut all = hello.to_vec();
        all.extend(noise);
        all.extend(&sealed);
        all.extend(&sealed[..5]);
        s.push(&all);
        assert_eq!(s.next().unwrap(), hello);
        assert_eq!(s.next().unwrap(), noise);
        assert_eq!(s.next().unwrap(), sealed);
        assert_eq!(s.next(), None);
        s.push(&sealed[5..]);
        assert_eq!(s.next().unwrap(), sealed);
        assert_eq!(s.index, 4);
    }

    #[test]
    fn only_test_addresses() {
        for ok in [
            "127.0.0.1",
            "10.64.0.1",
            "192.168.1.1",
            "172.20.0.1",
            "100.64.0.1",
            "::1",
        ] {
            assert!(is_test_address(ok.parse().unwrap()), "{ok}");
        }
        for bad in ["8.8.8.8", "0.0.0.0", "100.128.0.1", "2001:db8::1", "::"] {
            assert!(!is_test_address(bad.parse().unwrap()), "{bad}");
        }
    }
}
