//! Records the compiler version at build time, so the comparison table can say
//! which rustc produced the measured binary (not whichever one is on PATH now).

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(&rustc)
        .arg("-V")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SHMBUS_BENCH_RUSTC={version}");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
