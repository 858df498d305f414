//! The soak's resource samples: per process and in total, resident memory
//! (`VmRSS` of `/proc/<pid>/status`) and open descriptors (entries of
//! `/proc/<pid>/fd`); the ring files (`.ring`), all files and the bytes
//! they occupy under the run's bus roots; and the bytes used on the file
//! system holding them (`statvfs` of `/dev/shm`: the whole tmpfs, so other
//! users' files count too).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

/// One sample of the whole mix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Per process: `(role name, VmRSS KiB, open fds)`; a process that
    /// just exited is left out.
    pub procs: Vec<(String, u64, u64)>,
    /// `.ring` files under the roots.
    pub ring_files: u64,
    /// All files under the roots (rings, control files, registries, bridge
    /// holds and markers).
    pub files: u64,
    /// Bytes allocated to those files (`st_blocks * 512`).
    pub file_bytes: u64,
    /// Bytes used on the file system of the roots (`statvfs`).
    pub fs_used_bytes: u64,
}

impl Sample {
    /// Total resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.procs.iter().map(|p| p.1).sum()
    }

    /// Total open descriptors.
    pub fn fds(&self) -> u64 {
        self.procs.iter().map(|p| p.2).sum()
    }
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Number of open descriptors of `pid`.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// `(ring files, files, allocated bytes)` under `dirs`, recursively.
pub fn files_under(dirs: &[PathBuf]) -> (u64, u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let (mut rings, mut files, mut bytes) = (0, 0, 0);
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
                continue;
            }
            files += 1;
            bytes += meta.blocks() * 512;
            if e.path().extension().is_some_and(|x| x == "ring") {
                rings += 1;
            }
        }
    }
    (rings, files, bytes)
}

/// Bytes used on the file system holding `path`.
pub fn fs_used(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: all-zero is a valid `statvfs` (plain integers).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_blocks - st.f_bfree) * st.f_frsize)
}

/// Samples the processes `pids` (pid, role name) and the files under
/// `roots`, `t_s` seconds into the run.
pub fn sample(t_s: f64, pids: &[(u32, &str)], roots: &[PathBuf]) -> Sample {
    let procs = pids
        .iter()
        .filter_map(|&(pid, name)| Some((name.to_string(), rss_kib(pid)?, open_fds(pid)?)))
        .collect();
    let (ring_files, files, file_bytes) = files_under(roots);
    Sample {
        t_s,
        procs,
        ring_files,
        files,
        file_bytes,
        fs_used_bytes: roots.first().and_then(|r| fs_used(r)).unwrap_or(0),
    }
}

/// The CSV header for samples of the roles `names`.
pub fn csv_header(names: &[String]) -> String {
    let mut h = String::from("t_s,rss_kib,fds,ring_files,files,file_bytes,fs_used_bytes");
    for n in names {
        let _ = write!(h, ",{n}_rss_kib,{n}_fds");
    }
    h
}

/// One CSV row, with per-role columns in the order of `names` (empty for
/// a role not sampled).
pub fn csv_row(s: &Sample, names: &[String]) -> String {
    let mut row = format!(
        "{:.1},{},{},{},{},{},{}",
        s.t_s,
        s.rss_kib(),
        s.fds(),
        s.ring_files,
        s.files,
        s.file_bytes,
        s.fs_used_bytes
    );
    for n in names {
        match s.procs.iter().find(|p| &p.0 == n) {
            Some(p) => {
                let _ = write!(row, ",{},{}", p.1, p.2);
            }
            None => row.push_str(",,"),
        }
    }
    row
}

/// Parses the CSV back: `(t_s, rss_kib, fds, ring_files, files,
/// file_bytes, fs_used_bytes)` per row.
pub fn parse_csv(text: &str) -> Vec<[f64; 7]> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut out = [0.0; 7];
            let mut it = l.split(',');
            for v in &mut out {
                *v = it.next()?.parse().ok()?;
            }
            Some(out)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured_and_the_csv_round_trips() {
        let me = std::process::id();
        let rss = rss_kib(me).unwrap();
        assert!(rss > 0);
        let before = open_fds(me).unwrap();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(open_fds(me).unwrap(), before + 1);
        drop(f);
        let dir = std::env::temp_dir().join(format!("chaos-sampler-{me}"));
        std::fs::create_dir_all(dir.join("t")).unwrap();
        std::fs::write(dir.join("t/x.ring"), vec![1u8; 8192]).unwrap();
        std::fs::write(dir.join("t/x.ctl"), b"c").unwrap();
        let s = sample(1.5, &[(me, "me")], std::slice::from_ref(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((s.ring_files, s.files), (1, 2));
        assert!(s.file_bytes >= 8192 && s.fs_used_bytes > 0);
        let names = vec!["me".to_string(), "gone".to_string()];
        let csv = format!("{}\n{}\n", csv_header(&names), csv_row(&s, &names));
        let rows = parse_csv(&csv);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0][0], 1.5);
        assert_eq!(rows[0][3], 1.0);
        assert!(
            csv.trim_end().ends_with(",,"),
            "an absent role leaves empty cells"
        );
    }
}
