//! Pipes: one named FIFO per receiver and direction in the run directory
//! (`mkfifo`), default pipe capacity. Messages go through [`crate::stream`].

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::stream::{FdRx, FdTx};
use crate::transport::{retry_until, ChannelSpec, Rx, System, Tx};

/// Pipes (named FIFOs, so unrelated processes can rendezvous by path).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pipe;

fn path(spec: &ChannelSpec, index: usize) -> PathBuf {
    spec.dir.join(format!("{}.{index}.fifo", spec.name))
}

fn mkfifo(path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).context("fifo path contains NUL")?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mkfifo {}", path.display()));
    }
    Ok(())
}

impl System for Pipe {
    fn name(&self) -> &'static str {
        "pipe"
    }

    fn notes(&self) -> &'static [&'static str] {
        &[
            "pipe: one FIFO per receiver and direction, default 64 KiB pipe capacity; \
           the receiver reads greedily into a >= 64 KiB buffer, the payload is copied in and out \
           of the kernel",
        ]
    }

    fn open_tx(&self, spec: &ChannelSpec) -> Result<Box<dyn Tx>> {
        for i in 0..spec.receivers {
            mkfifo(&path(spec, i))?;
        }
        let mut files = Vec::with_capacity(spec.receivers);
        for i in 0..spec.receivers {
            let p = path(spec, i);
            // A non-blocking open for writing fails with ENXIO until a reader
            // has the FIFO open; retrying keeps the timeout in our hands.
            let file = retry_until(spec.connect_timeout, &format!("pipe receiver {i}"), || {
                match OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&p)
                {
                    Ok(f) => Ok(Some(f)),
                    Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
                    Err(e) => Err(e).with_context(|| format!("opening {}", p.display())),
                }
            })?;
            files.push(file);
        }
        Ok(Box::new(FdTx::new(files, spec.msg_len, spec.wait)?))
    }

    fn open_rx(&self, spec: &ChannelSpec, index: usize) -> Result<Box<dyn Rx>> {
        let p = path(spec, index);
        retry_until(
            spec.connect_timeout,
            "the pipe sender to create its FIFO",
            || Ok(p.exists().then_some(())),
        )?;
        // A blocking open for reading returns once the writer opened its end;
        // opening non-blocking instead would read EOF until then.
        let file: File = OpenOptions::new()
            .read(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        Ok(Box::new(FdRx::new(file, spec.msg_len, spec.wait)?))
    }
}
