//! A description of the machine the numbers were measured on.

use std::ffi::CStr;

/// `(label, value)` pairs describing the machine and toolchain.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// Ordered facts.
    pub facts: Vec<(String, String)>,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn cpuinfo_field(cpuinfo: &str, key: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

fn uname() -> String {
    // SAFETY: utsname is plain data; all-zero is valid.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".to_owned();
    }
    let field = |f: &[libc::c_char]| {
        // SAFETY: uname NUL-terminates every field inside its fixed array.
        unsafe { CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    format!(
        "{} {} {} ({})",
        field(&u.sysname),
        field(&u.release),
        field(&u.machine),
        field(&u.version)
    )
}

impl Machine {
    /// Collects the description now (load average included, so call it at the
    /// start of a run).
    pub fn describe() -> Machine {
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo_field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into());
        let virt = cpuinfo_field(&cpuinfo, "flags")
            .is_some_and(|f| f.split_whitespace().any(|x| x == "hypervisor"));
        let mem = read("/proc/meminfo")
            .and_then(|m| cpuinfo_field(&m, "MemTotal"))
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
            .unwrap_or_else(|| "unknown".into());
        let load = read("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| "unknown".into());
        let clock = read("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let mut facts = vec![
            (
                "CPU".to_owned(),
                format!("{model}{}", if virt { " (virtualized)" } else { "" }),
            ),
            (
                "Cores".to_owned(),
                format!("{} logical CPUs online", crate::os::online_cpus()),
            ),
            ("Memory".to_owned(), mem),
            ("Kernel".to_owned(), uname()),
            ("Clock source".to_owned(), clock),
            ("rustc".to_owned(), env!("SHMBUS_BENCH_RUSTC").to_owned()),
            (
                "Profile".to_owned(),
                if cfg!(debug_assertions) {
                    "debug (numbers are meaningless: use --release)".to_owned()
                } else {
                    "release".to_owned()
                },
            ),
            ("Load average at start".to_owned(), load),
        ];
        facts.extend(optional_facts());
        Machine { facts }
    }
}

/// Versions of optional systems compiled in.
fn optional_facts() -> Vec<(String, String)> {
    #[cfg(feature = "iceoryx2")]
    let v = vec![(
        "iceoryx2".to_owned(),
        crate::systems::iceoryx2::VERSION.to_owned(),
    )];
    #[cfg(not(feature = "iceoryx2"))]
    let v = Vec::new();
    v
}
