//! "shmbus (raw bytes)": the byte layer, `shmbus_bus::RingWriter` and
//! `RingReader`, with the payload written in place in a loan and checked in
//! place in the ring.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use shmbus_bus::{ReadEvent, RingConfig, RingReader, RingWriter, StartAt, WaitStrategy};

use super::{geometry_for, strategy, RING_NOTE};
use crate::payload;
use crate::transport::{retry_until, ChannelSpec, Rx, System, Tx};

/// Name of this system in tables and on the command line.
pub const NAME: &str = "shmbus (raw bytes)";

/// The shmbus byte layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShmbusRaw;

fn ring_path(spec: &ChannelSpec) -> PathBuf {
    spec.dir.join(format!("{}.ring", spec.name))
}

impl System for ShmbusRaw {
    fn name(&self) -> &'static str {
        NAME
    }

    fn notes(&self) -> &'static [&'static str] {
        &[
            "shmbus (raw bytes): shmbus_bus::RingWriter::loan, payload written in place, \
             Loan::commit; receive one message per call with RingReader::try_read \
             (RingReader::read in the blocking row), payload checked in place before release",
            RING_NOTE,
        ]
    }

    fn open_tx(&self, spec: &ChannelSpec) -> Result<Box<dyn Tx>> {
        let geo = geometry_for(spec, spec.msg_len);
        let config = RingConfig {
            capacity: geo.capacity,
            max_message: geo.max_message,
            slots: u32::try_from(spec.receivers).context("too many receivers")?,
            ..RingConfig::default()
        };
        let path = ring_path(spec);
        let writer = RingWriter::create(&path, &config)
            .with_context(|| format!("creating ring {}", path.display()))?;
        retry_until(spec.connect_timeout, "shmbus subscribers", || {
            Ok((writer.stats().subscribers >= spec.receivers).then_some(()))
        })?;
        Ok(Box::new(RawTx {
            writer,
            len: spec.msg_len,
            wait: strategy(spec.wait),
        }))
    }

    fn open_rx(&self, spec: &ChannelSpec, _index: usize) -> Result<Box<dyn Rx>> {
        let path = ring_path(spec);
        let reader = retry_until(
            spec.connect_timeout,
            "the shmbus ring",
            || match RingReader::open(&path, StartAt::Latest) {
                Ok(r) => Ok(Some(r)),
                Err(shmbus_bus::Error::NotFound(_) | shmbus_bus::Error::NotInitialized(_)) => {
                    Ok(None)
                }
                Err(e) => Err(e).with_context(|| format!("opening ring {}", path.display())),
            },
        )?;
        Ok(Box::new(RawRx {
            reader,
            len: spec.msg_len,
            wait: strategy(spec.wait),
        }))
    }
}

#[derive(Debug)]
struct RawTx {
    writer: RingWriter,
    len: usize,
    wait: WaitStrategy,
}

impl Tx for RawTx {
    fn send(&mut self, seq: u64) -> Result<()> {
        let mut loan = self
            .writer
            .loan(self.len, self.wait, None)
            .context("shmbus loan failed")?;
        let buf = loan.as_uninit();
        let Some(dst) = buf.get_mut(..self.len) else {
            bail!("shmbus loaned {} bytes, asked for {}", buf.len(), self.len);
        };
        payload::write_uninit(seq, dst);
        loan.commit(self.len);
        Ok(())
    }
}

#[derive(Debug)]
struct RawRx {
    reader: RingReader,
    len: usize,
    wait: WaitStrategy,
}

impl RawRx {
    fn take(event: ReadEvent<'_>, len: usize) -> Result<Option<u64>> {
        match event {
            ReadEvent::Message(m) => payload::check(m.payload(), len).map(Some),
            ReadEvent::Empty => Ok(None),
            ReadEvent::Gap { messages, .. } => {
                bail!("shmbus reported {messages} lost messages on a lossless ring")
            }
            ReadEvent::Closed => bail!("the shmbus publisher closed before the end message"),
        }
    }
}

impl Rx for RawRx {
    fn try_recv(&mut self) -> Result<Option<u64>> {
        let len = self.len;
        let event = self.reader.try_read().context("shmbus read failed")?;
        Self::take(event, len)
    }

    fn recv_blocking(&mut self) -> Result<u64> {
        let len = self.len;
        loop {
            let event = self
                .reader
                .read(self.wait, None)
                .context("shmbus read failed")?;
            if let Some(seq) = Self::take(event, len)? {
                return Ok(seq);
            }
        }
    }
}
