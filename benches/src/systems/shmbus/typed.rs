//! "shmbus (checked)" and "shmbus (unchecked)": the typed client API,
//! `shmbus::Publisher<Msg>` and `shmbus::Subscriber<Msg>`, reading the
//! archived [`Msg`] in place. The two differ only in whether the subscriber
//! validates every archive with rkyv's `bytecheck` (the default) or trusts
//! its publishers (`Subscriber::trust_publishers`).

use anyhow::{bail, Context, Result};
use shmbus::{Bus, Publisher, StartAt, Subscriber};

use super::{geometry_for, strategy, IN_PLACE_FROM, RING_NOTE};
use crate::msg::{self, Msg};
use crate::payload;
use crate::transport::{retry_until, ChannelSpec, Rx, System, Tx};

/// Name of the validating system.
pub const CHECKED: &str = "shmbus (checked)";
/// Name of the trusting system.
pub const UNCHECKED: &str = "shmbus (unchecked)";

/// The typed API; `checked` selects rkyv validation on receive.
#[derive(Debug, Clone, Copy)]
pub struct ShmbusTyped {
    /// Validate every received archive (rkyv `bytecheck`).
    pub checked: bool,
}

const NOTE_TYPED: &str =
    "shmbus (checked) / (unchecked): typed API over Msg { seq: u64, payload: Vec<u8> } (rkyv). \
     Payloads below 64 KiB: Publisher::send(&msg), rkyv serializes into the ring, copying the \
     payload the sender wrote into its Vec. 64 KiB and up: Publisher::send_filled with a Fill \
     payload, the payload written once, in place, in 4 KiB rows (the client's safe in-place \
     API; the same bytes rkyv::to_bytes produces). Receive: one message per call, Subscriber::try_recv \
     (recv in the blocking row); the archived Msg is read in place and its whole payload \
     checked. checked: rkyv validation of every archive (the \
     default); unchecked: Subscriber::trust_publishers";

/// The publishers of a run are this binary's own sender roles, in a private
/// (0700) run directory; they write archives with rkyv or
/// [`msg::send_in_place`], which produces rkyv's bytes.
fn bus_for(spec: &ChannelSpec, capacity: u64, max_message: u64) -> Result<Bus> {
    Bus::builder()
        .root(&spec.dir)
        .capacity(capacity)
        .max_message(max_message)
        .slots(u32::try_from(spec.receivers).context("too many receivers")?)
        .build()
        .context("configuring the shmbus bus")
}

impl System for ShmbusTyped {
    fn name(&self) -> &'static str {
        if self.checked {
            CHECKED
        } else {
            UNCHECKED
        }
    }

    fn notes(&self) -> &'static [&'static str] {
        &[NOTE_TYPED, RING_NOTE]
    }

    fn open_tx(&self, spec: &ChannelSpec) -> Result<Box<dyn Tx>> {
        let geo = geometry_for(spec, msg::archived_len(spec.msg_len));
        let bus = bus_for(spec, geo.capacity, geo.max_message)?;
        let mut publisher = bus
            .publisher::<Msg>(&spec.name)
            .context("creating the shmbus publisher")?;
        publisher.set_wait_strategy(strategy(spec.wait));
        retry_until(spec.connect_timeout, "shmbus subscribers", || {
            Ok((publisher.stats().subscribers >= spec.receivers).then_some(()))
        })?;
        let in_place = spec.msg_len >= IN_PLACE_FROM;
        Ok(Box::new(TypedTx {
            publisher,
            msg: Msg {
                seq: 0,
                payload: if in_place {
                    Vec::new()
                } else {
                    vec![0; spec.msg_len]
                },
            },
            len: spec.msg_len,
            in_place,
        }))
    }

    fn open_rx(&self, spec: &ChannelSpec, _index: usize) -> Result<Box<dyn Rx>> {
        let geo = geometry_for(spec, msg::archived_len(spec.msg_len));
        let bus = bus_for(spec, geo.capacity, geo.max_message)?;
        let mut subscriber = bus
            .subscriber_with::<Msg>(&spec.name, StartAt::Latest, strategy(spec.wait))
            .context("creating the shmbus subscriber")?;
        if !self.checked {
            // SAFETY: the only publisher of this topic is the sender role of
            // this same binary, in this run's private directory; it writes
            // archives of `Msg` with rkyv or with `msg::send_in_place`,
            // which is tested to produce rkyv's exact bytes.
            unsafe { subscriber.trust_publishers() };
        }
        // Attached once the publisher's ring is joined (the subscriber looks
        // for publishers at every poll while it has none).
        retry_until(spec.connect_timeout, "the shmbus publisher", || {
            if subscriber.try_recv()?.is_some() {
                bail!("shmbus data arrived before every receiver was attached");
            }
            Ok((!subscriber.publishers().is_empty()).then_some(()))
        })?;
        Ok(Box::new(TypedRx {
            subscriber,
            len: spec.msg_len,
        }))
    }
}

#[derive(Debug)]
struct TypedTx {
    publisher: Publisher<Msg>,
    /// The message sent by `Publisher::send` (small payloads), rewritten for
    /// every message.
    msg: Msg,
    len: usize,
    /// Write the payload in place (`send_filled`).
    in_place: bool,
}

impl Tx for TypedTx {
    fn send(&mut self, seq: u64) -> Result<()> {
        if self.in_place {
            return msg::send_in_place(&mut self.publisher, seq, self.len);
        }
        self.msg.seq = seq;
        payload::write(seq, &mut self.msg.payload);
        self.publisher
            .send(&self.msg)
            .context("shmbus send failed")?;
        Ok(())
    }
}

#[derive(Debug)]
struct TypedRx {
    subscriber: Subscriber<Msg>,
    len: usize,
}

impl Rx for TypedRx {
    fn try_recv(&mut self) -> Result<Option<u64>> {
        match self
            .subscriber
            .try_recv()
            .context("shmbus receive failed")?
        {
            Some(sample) => msg::check(&sample, self.len).map(Some),
            None => Ok(None),
        }
    }

    fn recv_blocking(&mut self) -> Result<u64> {
        let sample = self.subscriber.recv().context("shmbus receive failed")?;
        msg::check(&sample, self.len)
    }
}
