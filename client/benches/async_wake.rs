//! Async receive, measured (a plain binary: latency distributions and
//! resource use, which criterion's model does not fit).
//!
//! - `latency`: a publisher thread sends one message every 2 ms (so the
//!   receiver is asleep each time), stamped with the time of `send`; the
//!   receiver notes when the message is in its hands. Blocking `recv` on
//!   its own thread against `recv_async` on a current-thread tokio runtime.
//!   Median, p90, p99 and max of the wake-up latency.
//! - `idle`: 100 subscribers (one topic each, each with a live publisher
//!   that sends nothing) wait in `recv_async` on a 2-worker tokio runtime
//!   for 10 s: threads of the process while they wait, and the CPU time
//!   (getrusage, user + system) the process used over the 10 s.
//!
//! ```text
//! cargo bench -p shmbus --bench async_wake            # both
//! SHMBUS_BENCH=latency cargo bench -p shmbus --bench async_wake
//! ```

use std::{
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant},
};

use shmbus::Bus;

const ROUNDS: usize = 2_000;
const GAP: Duration = Duration::from_millis(2);
const IDLE_SUBSCRIBERS: usize = 100;
const IDLE_FOR: Duration = Duration::from_secs(10);

static BASE: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A private directory under /dev/shm, removed on drop.
struct ShmDir(PathBuf);

impl ShmDir {
    fn new(tag: &str) -> Self {
        Self(PathBuf::from(format!(
            "/dev/shm/shmbus-bench-async-{tag}-{}",
            std::process::id()
        )))
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn report(name: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "{name:<28} n={:<5} median {:>7.1} us  p90 {:>7.1} us  p99 {:>7.1} us  max {:>8.1} us",
        ns.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

/// Starts a publisher thread on `topic` that sends `ROUNDS` stamped
/// messages, `GAP` apart.
fn stamped_sender(bus: &Bus, topic: &str) -> std::thread::JoinHandle<()> {
    let mut publisher = bus.publisher::<u64>(topic).expect("publisher");
    std::thread::spawn(move || {
        for _ in 0..ROUNDS {
            std::thread::sleep(GAP);
            publisher.send(&now_ns()).expect("send");
        }
    })
}

fn latency() {
    let dir = ShmDir::new("latency");
    let bus = Bus::builder().root(&dir.0).build().expect("bus");

    let mut subscriber = bus.subscriber::<u64>("blocking").expect("subscriber");
    let sender = stamped_sender(&bus, "blocking");
    let mut lat = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let sample = subscriber.recv().expect("recv");
        lat.push(now_ns().saturating_sub(sample.to_native()));
    }
    sender.join().expect("sender");
    report("blocking recv", lat);

    let mut subscriber = bus.subscriber::<u64>("async").expect("subscriber");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sender = stamped_sender(&bus, "async");
    let lat = rt.block_on(async {
        let mut lat = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let sample = subscriber.recv_async().await.expect("recv_async");
            lat.push(now_ns().saturating_sub(sample.to_native()));
        }
        lat
    });
    sender.join().expect("sender");
    report("recv_async (current_thread)", lat);
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// User + system CPU time of the process so far.
fn cpu() -> Duration {
    // SAFETY: `usage` is a valid out-pointer for getrusage.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn idle() {
    let dir = ShmDir::new("idle");
    let bus = Bus::builder().root(&dir.0).build().expect("bus");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let before = threads();
    let mut publishers = Vec::new();
    let mut tasks = Vec::new();
    for k in 0..IDLE_SUBSCRIBERS {
        let topic = format!("t{k}");
        let mut subscriber = bus.subscriber::<u64>(&topic).expect("subscriber");
        publishers.push(bus.publisher::<u64>(&topic).expect("publisher"));
        tasks.push(rt.spawn(async move { *subscriber.recv_async().await.expect("recv") }));
    }
    // Let every receive reach its wait.
    std::thread::sleep(Duration::from_secs(1));
    let waiting = threads();
    let t0 = cpu();
    let w0 = Instant::now();
    std::thread::sleep(IDLE_FOR);
    let used = cpu() - t0;
    let wall = w0.elapsed();
    let after = threads();
    for (k, p) in publishers.iter_mut().enumerate() {
        p.send(&(k as u64)).expect("send");
    }
    for (k, t) in tasks.into_iter().enumerate() {
        assert_eq!(rt.block_on(t).expect("task"), k as u64);
    }
    println!(
        "{IDLE_SUBSCRIBERS} idle recv_async: threads {before} before, {waiting} waiting, {after} after {:.1} s; \
         CPU {:.1} ms over {:.1} s ({:.3} % of a core)",
        wall.as_secs_f64(),
        used.as_secs_f64() * 1e3,
        wall.as_secs_f64(),
        used.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes
    // nothing of ours: run only when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let which = std::env::var("SHMBUS_BENCH").unwrap_or_default();
    if which.is_empty() || which == "latency" {
        latency();
    }
    if which.is_empty() || which == "idle" {
        idle();
    }
}
