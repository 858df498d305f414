//! Helper process of the `shmbus` command's tests: a typed publisher or
//! subscriber of `String` messages on a real bus.
//!
//! ```text
//! shmbus-test-peer publish   --root R --topic T [--count N] [--rate MSGS_PER_S]
//!                            [--capacity B] [--overwrite] [--size BYTES] [--label L]
//! shmbus-test-peer subscribe --root R --topic T [--count N] [--read K]
//! ```
//!
//! Lines on stdout: publisher `ready <id>`, `done published=<n> full=<n>`
//! after `--count` messages and after each `send <n>` line read from stdin,
//! and it keeps its ring open until stdin ends; subscriber `subscribed`,
//! `got <text>` per message, `error <what>` (it goes on reading, except
//! after a 30 s timeout), `stalled` after `--read K` messages (then it
//! reads no more until stdin ends), `finished received=<n>`.
//! Both die with their parent (`PR_SET_PDEATHSIG`).

use std::{
    collections::HashMap,
    io::{Read, Write},
    process::ExitCode,
    time::{Duration, Instant},
};

use shmbus::{Bus, Policy};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn wait_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn main() -> ExitCode {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut argv = std::env::args().skip(1);
    let role = argv.next().unwrap_or_default();
    let mut opts = HashMap::new();
    let rest: Vec<String> = argv.collect();
    let mut i = 0;
    while i < rest.len() {
        let key = rest[i].trim_start_matches("--").to_owned();
        if key == "overwrite" {
            opts.insert(key, String::new());
            i += 1;
        } else {
            opts.insert(key, rest.get(i + 1).cloned().unwrap_or_default());
            i += 2;
        }
    }
    let get = |k: &str| opts.get(k).cloned();
    let num = |k: &str, d: u64| get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let capacity = num("capacity", 1 << 16);
    let mut builder = Bus::builder()
        .root(get("root").expect("--root"))
        .capacity(capacity)
        .max_message(capacity / 4);
    if opts.contains_key("overwrite") {
        builder = builder.policy(Policy::Overwrite);
    }
    let bus = builder.build().expect("bus");
    let topic = get("topic").expect("--topic");
    match role.as_str() {
        "publish" => {
            let label = get("label").unwrap_or_else(|| "peer".into());
            let mut publisher = bus
                .publisher_named::<String>(&topic, &label)
                .expect("publisher");
            say(&format!("ready {}", publisher.id()));
            let rate = num("rate", 0);
            let size = num("size", 0) as usize;
            let mut next = 0u64;
            let mut send = |count: u64| {
                let start = Instant::now();
                for i in 0..count {
                    if rate > 0 {
                        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let mut text = format!("msg {next}");
                    if text.len() < size {
                        text.extend(std::iter::repeat_n('.', size - text.len()));
                    }
                    publisher.send(&text).expect("send");
                    next += 1;
                }
                let stats = publisher.stats();
                say(&format!(
                    "done published={} full={}",
                    stats.published, stats.full_events
                ));
            };
            send(num("count", 0));
            // `send N` on stdin sends N more; EOF ends.
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("send ").and_then(|n| n.parse().ok()) {
                    send(n);
                }
            }
            ExitCode::SUCCESS
        }
        "subscribe" => {
            let mut sub = bus.subscriber::<String>(&topic).expect("subscriber");
            say("subscribed");
            let count = num("count", u64::MAX);
            let read = num("read", u64::MAX);
            let mut received = 0u64;
            while received < count {
                if received == read {
                    say("stalled");
                    wait_stdin_eof();
                    return ExitCode::SUCCESS;
                }
                match sub.recv_timeout(Duration::from_secs(30)) {
                    Ok(sample) => {
                        // Released before it is reported: a test that stops
                        // this process after the line sees the position past it.
                        let text = sample.as_str().to_owned();
                        drop(sample);
                        received += 1;
                        say(&format!("got {text}"));
                    }
                    Err(shmbus::Error::Timeout(_)) => {
                        say("error timed out");
                        return ExitCode::from(1);
                    }
                    // A damaged or foreign ring is reported once; the
                    // others are still read.
                    Err(e) => say(&format!("error {e}")),
                }
            }
            say(&format!("finished received={received}"));
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("shmbus-test-peer: unknown role {other:?}");
            ExitCode::from(2)
        }
    }
}
