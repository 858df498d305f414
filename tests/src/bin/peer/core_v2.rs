//! Peer modes for the Core v2 tests (issue 7).
//!
//! ```text
//! peer hold --root R --topic T [--hold-ms MS] [--after keep|release]
//!      [--count C] [--timeout-s S] [--group]
//! peer ring-publish --root R --path P [--slots N] [--capacity B]
//!      [--size-max B] [--for-ms MS] [--stuck-ms MS]
//! peer ring-storm --root R --path P --log FILE [--for-ms MS] [--read-max K]
//!      [--seed S] [--stuck-ms MS]
//! peer sweep --root R --topic T [--for-ms MS] [--every-ms MS]
//! peer fill --root R --topic T [--capacity B] [--max-rings N] [--count C]
//! peer access --root R --file F [--topic T] [--group]
//! ```
//!
//! - `hold`: subscribes, takes the first sample, snapshots its bytes,
//!   prints `holding seq=<s> len=<n>`, keeps it `--hold-ms`, then compares
//!   and prints `held unchanged seq=<s>` or `held changed seq=<s> ...`. With
//!   `--after keep` (default) it then keeps holding the sample until stdin
//!   ends or it is killed; with `--after release` it drops it and receives
//!   until `--count` messages in all, checking each, then prints `finished
//!   received=<n>`. Exits 0 if the bytes never changed and every check
//!   passed, 4 if the held bytes changed, 1 on other errors.
//! - `ring-publish`: a bus-level [`RingWriter`] (Block) at `--path` writing
//!   [`storm_payload`]s as fast as it can for `--for-ms`; prints `ready`,
//!   then `done published=<n> evictions=<n> full=<n>`; prints `stuck ...`
//!   and exits 5 if one message waits longer than `--stuck-ms`.
//! - `ring-storm`: joins and leaves the ring at `--path` in a loop with a
//!   bus-level [`RingReader`]; after each join it appends `<slot> <generation>
//!   <pid> <round>` to `--log` (one `write(2)`, before reading anything), then
//!   reads 1..=`--read-max` messages, checking every payload and that the
//!   sequence is contiguous within the membership. Exits 0, 1 on a wrong
//!   message or a lost slot, 5 if stuck.
//! - `sweep`: runs `sweep_topic` on the topic directory in a loop; prints
//!   `swept runs=<n> removed=<n>`.
//! - `fill`: subscribes, then creates publishers on the topic until creation
//!   fails (`create-failed <error>`) or `--max-rings` (`no-failure`); then
//!   sends `--count` messages through every ring it made and receives them
//!   all (`exchanged <n>`). Exit 0 if that worked.
//! - `access`: tries `open(O_RDWR)` on `--file` and `mprotect(PROT_WRITE)`
//!   of a read-only shared mapping of it, printing `open-rdwr ok|errno=<e>`,
//!   `map-read ok|errno=<e>`, `mprotect-write ok|errno=<e>`; with `--topic`
//!   it then subscribes (bus options as for `subscribe`, e.g. `--group`),
//!   receives one message and asks for write access to the library's own
//!   mappings of `--file`: `own-mprotect-write ok|errno=<e>`.

use std::{
    ffi::CString,
    io::Write,
    os::unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use shmbus::{Error, StartAt, WaitStrategy};
use shmbus_bus::{ReadEvent, RingConfig, RingReader, RingWriter};
use shmbus_tests::{
    args::Args,
    msg::{self, verify, TestMsg},
};

use super::{bus_from, say};

fn done(r: Result<ExitCode, String>, mode: &str) -> ExitCode {
    r.unwrap_or_else(|e| {
        say(&format!("error {e}"));
        eprintln!("peer {mode}: {e}");
        ExitCode::from(1)
    })
}

/// `hold`: see the module docs.
pub(crate) fn hold(args: Args) -> ExitCode {
    done(run_hold(args), "hold")
}

fn run_hold(mut args: Args) -> Result<ExitCode, String> {
    let bus = bus_from(&mut args)?;
    let topic: String = args.req("topic")?;
    let hold = Duration::from_millis(args.or("hold-ms", 3000u64)?);
    let keep = match args.or("after", "keep".to_string())?.as_str() {
        "keep" => true,
        "release" => false,
        a => return Err(format!("--after {a:?}: keep or release")),
    };
    let count: u64 = args.or("count", 1u64)?;
    let timeout = Duration::from_secs(args.or("timeout-s", 30u64)?);
    let _ = args.opt::<String>("expect-publishers")?;
    args.finish()?;

    let mut sub = bus
        .subscriber_with::<TestMsg>(&topic, StartAt::Oldest, WaitStrategy::default())
        .map_err(|e| format!("subscribe: {e}"))?;
    say("subscribed");
    let sample = sub
        .recv_timeout(timeout)
        .map_err(|e| format!("first receive: {e}"))?;
    let (_, seq) = verify(&sample).map_err(|e| format!("first sample: {e}"))?;
    let snapshot = sample.bytes().to_vec();
    say(&format!("holding seq={seq} len={}", snapshot.len()));
    std::thread::sleep(hold);
    let now = sample.bytes();
    let changed = now.len() != snapshot.len() || now != snapshot.as_slice();
    if changed {
        let at = now
            .iter()
            .zip(&snapshot)
            .position(|(a, b)| a != b)
            .unwrap_or(now.len().min(snapshot.len()));
        let still = verify(&sample).map_or_else(|e| e, |(p, s)| format!("now p{p} seq {s}"));
        say(&format!(
            "held changed seq={seq} first differing byte {at} of {} ({still})",
            snapshot.len()
        ));
    } else {
        say(&format!("held unchanged seq={seq}"));
    }
    let code = if changed { 4 } else { 0 };
    if keep {
        // Keep the sample (and so the publisher's gate) until told or killed.
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        drop(sample);
        return Ok(ExitCode::from(code));
    }
    drop(sample);
    let mut received = 1u64;
    let mut next = seq + 1;
    let deadline = Instant::now() + timeout;
    while received < count {
        if Instant::now() > deadline {
            return Err(format!(
                "only {received} of {count} received in {timeout:?}"
            ));
        }
        match sub.recv_timeout(Duration::from_millis(200)) {
            Ok(s) => {
                let (_, got) = verify(&s)?;
                if got != next {
                    return Err(format!("got seq {got}, expected {next}"));
                }
                next += 1;
                received += 1;
            }
            Err(Error::Timeout(_)) => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    say(&format!("finished received={received}"));
    Ok(ExitCode::from(code))
}

/// The payload of storm message `seq`: the sequence number (8 bytes LE), then
/// [`msg::payload`] of publisher 9 for `seq`, of a length derived from `seq`
/// below `size_max`.
pub(crate) fn storm_payload(seq: u64, size_max: usize) -> Vec<u8> {
    let len = (seq.wrapping_mul(0x9e37_79b9) % (size_max.saturating_sub(8).max(1) as u64)) as usize;
    let mut out = seq.to_le_bytes().to_vec();
    out.extend(msg::payload(9, seq, len));
    out
}

/// Checks a [`storm_payload`] and returns its sequence number.
fn check_storm(bytes: &[u8], size_max: usize) -> Result<u64, String> {
    let head: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("payload of {} bytes is too short", bytes.len()))?;
    let seq = u64::from_le_bytes(head);
    if bytes != storm_payload(seq, size_max).as_slice() {
        return Err(format!(
            "payload of seq {seq} ({} bytes) is wrong",
            bytes.len()
        ));
    }
    Ok(seq)
}

/// `ring-publish`: see the module docs.
pub(crate) fn ring_publish(args: Args) -> ExitCode {
    done(run_ring_publish(args), "ring-publish")
}

fn run_ring_publish(mut args: Args) -> Result<ExitCode, String> {
    let _ = args.opt::<PathBuf>("root")?;
    let path: PathBuf = args.req("path")?;
    let config = RingConfig {
        capacity: args.or("capacity", 4096u64)?,
        max_message: 512,
        slots: args.or("slots", 4u32)?,
        ..RingConfig::default()
    };
    let size_max: usize = args.or("size-max", 120usize)?;
    let run_for = Duration::from_millis(args.or("for-ms", 3000u64)?);
    let stuck = Duration::from_millis(args.or("stuck-ms", 10_000u64)?);
    args.finish()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut w = RingWriter::create(&path, &config).map_err(|e| format!("create: {e}"))?;
    say(&format!("ready path={}", path.display()));
    let start = Instant::now();
    let mut seq = 0u64;
    while start.elapsed() < run_for {
        let payload = storm_payload(seq, size_max);
        let t0 = Instant::now();
        loop {
            match w.write(
                &payload,
                WaitStrategy::default(),
                Some(Duration::from_millis(100)),
            ) {
                Ok(()) => break,
                Err(shmbus_bus::Error::Timeout) if t0.elapsed() < stuck => {}
                Err(shmbus_bus::Error::Timeout) => {
                    let s = w.stats();
                    say(&format!(
                        "stuck seq={seq} waited={:?} subscribers={} evictions={}",
                        t0.elapsed(),
                        s.subscribers,
                        s.evictions
                    ));
                    return Ok(ExitCode::from(5));
                }
                Err(e) => return Err(format!("write seq {seq}: {e}")),
            }
        }
        seq += 1;
    }
    let s = w.stats();
    say(&format!(
        "done published={} evictions={} full={}",
        s.published, s.evictions, s.full_events
    ));
    Ok(ExitCode::SUCCESS)
}

/// `ring-storm`: see the module docs.
pub(crate) fn ring_storm(args: Args) -> ExitCode {
    done(run_ring_storm(args), "ring-storm")
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn run_ring_storm(mut args: Args) -> Result<ExitCode, String> {
    let _ = args.opt::<PathBuf>("root")?;
    let path: PathBuf = args.req("path")?;
    let log_path: PathBuf = args.req("log")?;
    let run_for = Duration::from_millis(args.or("for-ms", 3000u64)?);
    let read_max: u64 = args.or("read-max", 40u64)?.max(1);
    let mut rng: u64 = args.or("seed", u64::from(std::process::id()))?;
    let size_max: usize = args.or("size-max", 120usize)?;
    let stuck = Duration::from_millis(args.or("stuck-ms", 10_000u64)?);
    args.finish()?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let pid = std::process::id();
    let start = Instant::now();
    let mut progress = Instant::now();
    let (mut rounds, mut messages, mut ever_joined, mut closed) = (0u64, 0u64, false, false);
    while start.elapsed() < run_for && !closed {
        if progress.elapsed() > stuck {
            say(&format!("stuck: no join or message for {stuck:?}"));
            return Ok(ExitCode::from(5));
        }
        let mut reader = match RingReader::open(&path, shmbus_bus::StartAt::Latest) {
            Ok(r) => r,
            Err(shmbus_bus::Error::NoFreeSlot(_) | shmbus_bus::Error::NotInitialized(_)) => {
                std::thread::sleep(Duration::from_micros(200 + splitmix(&mut rng) % 1500));
                continue;
            }
            Err(shmbus_bus::Error::NotFound(_)) if ever_joined => break,
            Err(shmbus_bus::Error::NotFound(_)) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(format!("open: {e}")),
        };
        ever_joined = true;
        progress = Instant::now();
        let (index, generation) = reader
            .slot()
            .ok_or("joined, but the reader reports no slot")?;
        // One write(2) of the whole line, before the slot is used.
        log.write_all(format!("{index} {generation} {pid} {rounds}\n").as_bytes())
            .map_err(|e| format!("log: {e}"))?;
        let want = 1 + splitmix(&mut rng) % read_max;
        let mut prev: Option<u64> = None;
        let mut got = 0;
        while got < want {
            match reader.read(WaitStrategy::default(), Some(Duration::from_millis(200))) {
                Ok(ReadEvent::Message(m)) => {
                    let seq = check_storm(m.payload(), size_max)
                        .map_err(|e| format!("slot {index} gen {generation}: {e}"))?;
                    if m.sequence() != seq {
                        return Err(format!(
                            "slot {index} gen {generation}: ring sequence {} carries seq {seq}",
                            m.sequence()
                        ));
                    }
                    if let Some(p) = prev {
                        if seq != p + 1 {
                            return Err(format!(
                                "slot {index} gen {generation}: seq {seq} after {p} (Block ring)"
                            ));
                        }
                    }
                    prev = Some(seq);
                    got += 1;
                    messages += 1;
                    progress = Instant::now();
                }
                Ok(ReadEvent::Gap { messages: n, bytes }) => {
                    return Err(format!(
                        "slot {index} gen {generation}: gap of {n} messages ({bytes} bytes) on a \
                         Block ring after {got} messages (previous seq {prev:?})"
                    ));
                }
                Ok(ReadEvent::Closed) => {
                    closed = true;
                    break;
                }
                Ok(ReadEvent::Empty) => {}
                Err(shmbus_bus::Error::Timeout) => {
                    if progress.elapsed() > stuck {
                        say(&format!(
                            "stuck: slot {index} gen {generation} got nothing for {stuck:?}"
                        ));
                        return Ok(ExitCode::from(5));
                    }
                    if start.elapsed() > run_for {
                        break;
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "slot {index} gen {generation}: read after {got} messages: {e}"
                    ))
                }
            }
        }
        drop(reader);
        rounds += 1;
    }
    say(&format!("finished rounds={rounds} messages={messages}"));
    Ok(ExitCode::SUCCESS)
}

/// `sweep`: see the module docs.
pub(crate) fn sweep(args: Args) -> ExitCode {
    done(run_sweep(args), "sweep")
}

fn run_sweep(mut args: Args) -> Result<ExitCode, String> {
    let root: PathBuf = args.req("root")?;
    let bus: String = args.or("bus", shmbus_bus::DEFAULT_BUS.to_string())?;
    let topic: String = args.req("topic")?;
    let run_for = Duration::from_millis(args.or("for-ms", 3000u64)?);
    let every = Duration::from_millis(args.or("every-ms", 5u64)?);
    args.finish()?;
    let dir = shmbus_bus::topic_dir(&root, &bus, &topic).map_err(|e| e.to_string())?;
    say("sweeping");
    let start = Instant::now();
    let (mut runs, mut removed) = (0u64, 0usize);
    while start.elapsed() < run_for {
        removed += shmbus_bus::sweep_topic(&dir).map_err(|e| format!("sweep: {e}"))?;
        runs += 1;
        std::thread::sleep(every);
    }
    say(&format!("swept runs={runs} removed={removed}"));
    Ok(ExitCode::SUCCESS)
}

/// `fill`: see the module docs.
pub(crate) fn fill(args: Args) -> ExitCode {
    done(run_fill(args), "fill")
}

fn run_fill(mut args: Args) -> Result<ExitCode, String> {
    let bus = bus_from(&mut args)?;
    let topic: String = args.req("topic")?;
    let max_rings: u32 = args.or("max-rings", 200u32)?;
    let count: u64 = args.or("count", 10u64)?;
    args.finish()?;
    let mut sub = bus
        .subscriber_with::<TestMsg>(&topic, StartAt::Oldest, WaitStrategy::default())
        .map_err(|e| format!("subscribe: {e}"))?;
    say("subscribed");
    let mut publishers = Vec::new();
    let mut failed = false;
    for i in 0..max_rings {
        match bus.publisher_named::<TestMsg>(&topic, &format!("f{i}")) {
            Ok(p) => {
                say(&format!("created {i}"));
                publishers.push(p);
            }
            Err(e) => {
                say(&format!("create-failed {e} ({e:?})"));
                failed = true;
                break;
            }
        }
    }
    if !failed {
        say(&format!("no-failure created={}", publishers.len()));
    }
    // The rings made before the failure keep working.
    let mut want = 0u64;
    for (i, p) in publishers.iter_mut().enumerate() {
        for seq in 0..count {
            p.send_timeout(&TestMsg::new(i as u32, seq, 100), Duration::from_secs(5))
                .map_err(|e| format!("send on ring {i}: {e}"))?;
            want += 1;
        }
    }
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while got < want && Instant::now() < deadline {
        match sub.recv_timeout(Duration::from_millis(200)) {
            Ok(s) => {
                verify(&s)?;
                got += 1;
            }
            Err(Error::Timeout(_)) => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    say(&format!("exchanged {got} of {want}"));
    Ok(if got == want {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `access`: see the module docs.
pub(crate) fn access(args: Args) -> ExitCode {
    done(run_access(args), "access")
}

fn errno_of(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES) => "errno=EACCES".into(),
        Some(libc::EPERM) => "errno=EPERM".into(),
        Some(n) => format!("errno={n}"),
        None => format!("error={e}"),
    }
}

fn run_access(mut args: Args) -> Result<ExitCode, String> {
    let file: PathBuf = args.req("file")?;
    let topic: Option<String> = args.opt("topic")?;
    let bus = match topic {
        Some(_) => Some(bus_from(&mut args)?),
        None => {
            let _ = args.opt::<PathBuf>("root")?;
            let _ = args.flag("group");
            None
        }
    };
    args.finish()?;
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&file)
    {
        Ok(_) => say("open-rdwr ok"),
        Err(e) => say(&format!("open-rdwr {}", errno_of(&e))),
    }
    say(&map_then_mprotect(&file));
    if let (Some(bus), Some(topic)) = (bus, topic) {
        // The library's own mapping of the data file, made by subscribing.
        let mut sub = bus
            .subscriber_with::<TestMsg>(&topic, StartAt::Oldest, WaitStrategy::default())
            .map_err(|e| format!("subscribe: {e}"))?;
        let sample = sub
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| format!("receive: {e}"))?;
        verify(&sample)?;
        drop(sample);
        say("received");
        say(&mprotect_own_mappings(&file));
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks for write access to every mapping of `file` this process has (the
/// ones the library made), per `/proc/self/maps`: `own-mprotect-write
/// ok|errno=<e>` (ok if any region became writable), or `own-mapping none`.
fn mprotect_own_mappings(file: &Path) -> String {
    let want = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut results = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || Path::new(fields[5]) != want {
            continue;
        }
        let Some((start, end)) = fields[0].split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: only the protection of an existing mapping of ours is
        // changed (widened); nothing is written through it.
        let r = unsafe {
            libc::mprotect(
                start as *mut libc::c_void,
                end - start,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        results.push(if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        });
    }
    if results.is_empty() {
        return "own-mapping none".into();
    }
    match results.iter().find_map(|r| r.as_ref().err()) {
        _ if results.iter().any(Result::is_ok) => format!(
            "own-mprotect-write ok ({} of {} regions)",
            results.iter().filter(|r| r.is_ok()).count(),
            results.len()
        ),
        Some(e) => format!("own-mprotect-write {}", errno_of(e)),
        None => "own-mapping none".into(),
    }
}

/// Maps one page of `file` read-only and shared, then asks for write access.
fn map_then_mprotect(file: &Path) -> String {
    let c = CString::new(file.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: `c` is a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return format!("map-read {}", errno_of(&std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh shared read-only mapping of a file we opened; nothing
    // in this process has references into it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        // SAFETY: `fd` is ours.
        unsafe { libc::close(fd) };
        return format!("map-read {}", errno_of(&e));
    }
    say("map-read ok");
    // SAFETY: `p` is the page mapped above; no Rust reference points into it.
    let r = unsafe { libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_WRITE) };
    let out = if r == 0 {
        "mprotect-write ok".to_string()
    } else {
        format!(
            "mprotect-write {}",
            errno_of(&std::io::Error::last_os_error())
        )
    };
    // SAFETY: unmapping and closing what we made above.
    unsafe {
        libc::munmap(p, 4096);
        libc::close(fd);
    }
    out
}

// ---------------------------------------------------------------------------
// Hostile words and liveness (tests/tests/hostile_words.rs, liveness.rs).
//
// peer hw-pub --path P [--capacity B] [--slots N] [--size-max B]
// peer hw-sub --path P [--start oldest|latest] [--wait block|spin|sleep]
//      [--size-max B] [--open-retry-ms MS]
// peer wake-sub --path P --rounds R
// peer fork-reader --path P
//
// - `hw-pub`: a bus-level Block [`RingWriter`] at `--path` (max message 512),
//   driven line by line from stdin:
//   `send N MS` writes N [`storm_payload`]s (sequence numbers continue),
//   each waiting at most MS ms: `sent n=<k> of=<N> end=ok|timeout|error
//   err=<text>`; `stats`: `stats published=<n> tail=<t> head=<h>
//   evictions=<e> full=<f> subscribers=<s>`; `reap`: `reaped <n>`. EOF
//   drops the writer (closes the ring) and exits 0.
// - `hw-sub`: opens a bus-level [`RingReader`] at `--path` and prints
//   `joined slot=<i> gen=<g> pos=<p>` (or `open-error <text>` and exits 1),
//   then per stdin line `read N MS` reads until N messages, the end of the
//   ring, an error or MS ms: `read got=<k> first=<seq|-> last=<seq|->
//   lost=<m> seqoff=<k> end=ok|timeout|closed|error err=<text>`. Every
//   payload is checked (a wrong one ends the read with `end=error
//   err=content: ...`), and so is the order (consecutive); `seqoff` counts
//   messages whose ring sequence number differs from the one in the payload.
//   EOF: drops the reader, prints `bye`, exits 0.
// - `wake-sub`: joins with `Block { spins: 0 }` (sleeps at once), prints
//   `joined`, then R times: reads one message (timeout 5 s) whose payload is
//   a CLOCK_MONOTONIC timestamp (ns, LE) and prints `woke round=<r>
//   latency_us=<x>` (or `error <text>` and exits 1).
// - `fork-reader`: joins, prints `joined slot=<i> gen=<g>`, forks (single
//   threaded here); the child drops its copy of the reader and `_exit(0)`s;
//   the parent reaps it, prints `child-exited code=<c>` and `slot ok|<err>
//   slot=<i> gen=<g>`, then waits for a line on stdin and reads one message:
//   `got <len>` (or `error <text>`), and exits 0.
// ---------------------------------------------------------------------------

fn stdin_lines() -> impl Iterator<Item = String> {
    std::io::stdin().lines().map_while(Result::ok)
}

fn flat(e: impl std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

/// `hw-pub`: see above.
pub(crate) fn hw_pub(args: Args) -> ExitCode {
    done(run_hw_pub(args), "hw-pub")
}

fn run_hw_pub(mut args: Args) -> Result<ExitCode, String> {
    let _ = args.opt::<PathBuf>("root")?;
    let path: PathBuf = args.req("path")?;
    let config = RingConfig {
        capacity: args.or("capacity", 4096u64)?,
        max_message: 512,
        slots: args.or("slots", 4u32)?,
        ..RingConfig::default()
    };
    let size_max: usize = args.or("size-max", 120usize)?;
    args.finish()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut w = RingWriter::create(&path, &config).map_err(|e| format!("create: {e}"))?;
    say(&format!("ready path={}", path.display()));
    let mut seq = 0u64;
    for line in stdin_lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["send", n, ms] => {
                let n: u64 = n.parse().map_err(|_| format!("bad line {line:?}"))?;
                let ms: u64 = ms.parse().map_err(|_| format!("bad line {line:?}"))?;
                let mut sent = 0;
                let mut end = "ok".to_string();
                while sent < n {
                    let payload = storm_payload(seq, size_max);
                    match w.write(
                        &payload,
                        WaitStrategy::default(),
                        Some(Duration::from_millis(ms)),
                    ) {
                        Ok(()) => {
                            sent += 1;
                            seq += 1;
                        }
                        Err(shmbus_bus::Error::Timeout) => {
                            end = "timeout".into();
                            break;
                        }
                        Err(e) => {
                            end = format!("error err={}", flat(e));
                            break;
                        }
                    }
                }
                say(&format!("sent n={sent} of={n} end={end}"));
            }
            ["stats"] => {
                let s = w.stats();
                say(&format!(
                    "stats published={} tail={} head={} evictions={} full={} subscribers={}",
                    s.published, s.tail, s.head, s.evictions, s.full_events, s.subscribers
                ));
            }
            ["reap"] => say(&format!("reaped {}", w.reap_dead_subscribers())),
            _ => return Err(format!("bad line {line:?}")),
        }
    }
    drop(w);
    Ok(ExitCode::SUCCESS)
}

fn wait_arg(args: &mut Args) -> Result<WaitStrategy, String> {
    Ok(match args.or("wait", "block".to_string())?.as_str() {
        "block" => WaitStrategy::default(),
        "sleep" => WaitStrategy::Block { spins: 0 },
        "spin" => WaitStrategy::BusySpin,
        "yield" => WaitStrategy::SpinThenYield { spins: 256 },
        w => return Err(format!("--wait {w:?}: block, sleep, spin or yield")),
    })
}

fn start_arg(args: &mut Args) -> Result<shmbus_bus::StartAt, String> {
    Ok(match args.or("start", "oldest".to_string())?.as_str() {
        "oldest" => shmbus_bus::StartAt::Oldest,
        "latest" => shmbus_bus::StartAt::Latest,
        s => return Err(format!("--start {s:?}: oldest or latest")),
    })
}

/// `hw-sub`: see above.
pub(crate) fn hw_sub(args: Args) -> ExitCode {
    done(run_hw_sub(args), "hw-sub")
}

fn run_hw_sub(mut args: Args) -> Result<ExitCode, String> {
    let _ = args.opt::<PathBuf>("root")?;
    let path: PathBuf = args.req("path")?;
    let start = start_arg(&mut args)?;
    let wait = wait_arg(&mut args)?;
    let size_max: usize = args.or("size-max", 120usize)?;
    args.finish()?;
    let mut reader = match RingReader::open(&path, start) {
        Ok(r) => r,
        Err(e) => {
            say(&format!("open-error {}", flat(e)));
            return Ok(ExitCode::from(1));
        }
    };
    let (index, generation) = reader.slot().ok_or("joined without a slot")?;
    say(&format!(
        "joined slot={index} gen={generation} pos={}",
        reader.position()
    ));
    let mut prev: Option<u64> = None;
    for line in stdin_lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["read", n, ms] = words.as_slice() else {
            return Err(format!("bad line {line:?}"));
        };
        let n: u64 = n.parse().map_err(|_| format!("bad line {line:?}"))?;
        let ms: u64 = ms.parse().map_err(|_| format!("bad line {line:?}"))?;
        let deadline = Instant::now() + Duration::from_millis(ms);
        let (mut got, mut lost, mut seqoff) = (0u64, 0u64, 0u64);
        let (mut first, mut last) = (None::<u64>, None::<u64>);
        let mut end = "ok".to_string();
        while got < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match reader.read(wait, Some(left)) {
                Ok(ReadEvent::Message(m)) => {
                    let seq = match check_storm(m.payload(), size_max) {
                        Ok(s) => s,
                        Err(e) => {
                            end = format!("error err=content: {e}");
                            break;
                        }
                    };
                    if m.sequence() != seq {
                        seqoff += 1;
                    }
                    if let Some(p) = prev {
                        if seq != p + 1 {
                            end = format!("error err=order: seq {seq} after {p}");
                            prev = Some(seq);
                            break;
                        }
                    }
                    prev = Some(seq);
                    first.get_or_insert(seq);
                    last = Some(seq);
                    got += 1;
                }
                Ok(ReadEvent::Gap { messages, .. }) => {
                    lost += messages;
                    prev = None;
                }
                Ok(ReadEvent::Closed) => {
                    end = "closed".into();
                    break;
                }
                Ok(ReadEvent::Empty) => {}
                Err(shmbus_bus::Error::Timeout) => {
                    end = "timeout".into();
                    break;
                }
                Err(e) => {
                    end = format!("error err={}", flat(e));
                    break;
                }
            }
        }
        let show = |v: Option<u64>| v.map_or("-".to_string(), |s| s.to_string());
        say(&format!(
            "read got={got} first={} last={} lost={lost} seqoff={seqoff} end={end}",
            show(first),
            show(last)
        ));
    }
    drop(reader);
    say("bye");
    Ok(ExitCode::SUCCESS)
}

/// CLOCK_MONOTONIC in nanoseconds (the same clock in every process).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `wake-sub`: see above.
pub(crate) fn wake_sub(args: Args) -> ExitCode {
    done(run_wake_sub(args), "wake-sub")
}

fn run_wake_sub(mut args: Args) -> Result<ExitCode, String> {
    let _ = args.opt::<PathBuf>("root")?;
    let path: PathBuf = args.req("path")?;
    let rounds: u32 = args.req("rounds")?;
    args.finish()?;
    let mut reader =
        RingReader::open(&path, shmbus_bus::StartAt::Latest).map_err(|e| format!("open: {e}"))?;
    // Slices far longer than the test's pauses: a round that is not ended
    // by a futex wake-up shows as a timeout in the sleep statistics.
    reader.set_max_sleep(Duration::from_secs(30));
    say("joined");
    for round in 0..rounds {
        let sent = match reader.read(
            WaitStrategy::Block { spins: 0 },
            Some(Duration::from_secs(30)),
        ) {
            Ok(ReadEvent::Message(m)) => m
                .payload()
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or("short payload")?,
            Ok(other) => return Err(format!("round {round}: {other:?}")),
            Err(e) => return Err(format!("round {round}: {e}")),
        };
        let now = monotonic_ns();
        let stats = reader.sleep_stats();
        say(&format!(
            "woke round={round} latency_us={} woken={} timeouts={}",
            now.saturating_sub(sent) / 1000,
            stats.woken,
            stats.timeouts
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `fork-reader`: see above.
pub(crate) fn fork_reader(args: Args) -> ExitCode {
    done(run_fork_reader(args), "fork-reader")
}

fn run_fork_reader(mut args: Args) -> Result<ExitCode, String> {
    let _ = args.opt::<PathBuf>("root")?;
    let path: PathBuf = args.req("path")?;
    args.finish()?;
    let mut reader =
        RingReader::open(&path, shmbus_bus::StartAt::Latest).map_err(|e| format!("open: {e}"))?;
    let (index, generation) = reader.slot().ok_or("joined without a slot")?;
    say(&format!("joined slot={index} gen={generation}"));
    // SAFETY: this process is single-threaded here (the peer starts no
    // threads), so the child may run arbitrary code until `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // The child: drop its copy of the handle (documented to leave the
        // parent's slot alone), then leave without running exit handlers.
        drop(reader);
        // SAFETY: `_exit` ends the child at once.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r != pid {
        return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    say(&format!("child-exited code={code}"));
    let (i2, g2) = reader.slot().ok_or("no slot after the fork")?;
    match reader.check_slot() {
        Ok(()) => say(&format!("slot ok slot={i2} gen={g2}")),
        Err(e) => say(&format!("slot {} slot={i2} gen={g2}", flat(e))),
    }
    let _ = stdin_lines().next();
    match reader.read(WaitStrategy::default(), Some(Duration::from_secs(10))) {
        Ok(ReadEvent::Message(m)) => say(&format!("got {}", m.payload().len())),
        Ok(other) => say(&format!("error {other:?}")),
        Err(e) => say(&format!("error {}", flat(e))),
    }
    Ok(ExitCode::SUCCESS)
}
