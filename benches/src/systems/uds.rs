//! Unix domain stream sockets: one connection per receiver, bound to a path in
//! the run directory. Messages go through [`crate::stream`].

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};

use anyhow::{Context, Result};

use crate::stream::{FdRx, FdTx};
use crate::transport::{retry_until, ChannelSpec, Rx, System, Tx};

/// Unix domain stream sockets (`AF_UNIX`, `SOCK_STREAM`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Uds;

fn path(spec: &ChannelSpec) -> std::path::PathBuf {
    spec.dir.join(format!("{}.sock", spec.name))
}

impl System for Uds {
    fn name(&self) -> &'static str {
        "uds"
    }

    fn notes(&self) -> &'static [&'static str] {
        &[
            "uds: one stream connection per receiver and direction, default kernel buffer sizes; \
           the receiver reads greedily into a >= 64 KiB buffer, the payload is copied in and out \
           of the kernel",
        ]
    }

    fn open_tx(&self, spec: &ChannelSpec) -> Result<Box<dyn Tx>> {
        let path = path(spec);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("binding unix socket {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let mut files = Vec::with_capacity(spec.receivers);
        for i in 0..spec.receivers {
            let stream =
                retry_until(
                    spec.connect_timeout,
                    &format!("uds receiver {i}"),
                    || match listener.accept() {
                        Ok((s, _)) => Ok(Some(s)),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
                        Err(e) => Err(e).context("accept on unix socket"),
                    },
                )?;
            files.push(File::from(OwnedFd::from(stream)));
        }
        Ok(Box::new(FdTx::new(files, spec.msg_len, spec.wait)?))
    }

    fn open_rx(&self, spec: &ChannelSpec, _index: usize) -> Result<Box<dyn Rx>> {
        let path = path(spec);
        let stream = retry_until(spec.connect_timeout, "the uds sender to listen", || {
            match UnixStream::connect(&path) {
                Ok(s) => Ok(Some(s)),
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) =>
                {
                    Ok(None)
                }
                Err(e) => Err(e).with_context(|| format!("connecting to {}", path.display())),
            }
        })?;
        let file = File::from(OwnedFd::from(stream));
        Ok(Box::new(FdRx::new(file, spec.msg_len, spec.wait)?))
    }
}
