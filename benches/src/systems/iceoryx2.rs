//! iceoryx2 (crates.io), publish-subscribe with loaned samples.
//!
//! Each channel is one `ipc` publish-subscribe service with a `[u8]` slice
//! payload of exactly the message size. The sender loans an uninitialized
//! sample (`loan_slice_uninit`), writes the payload in place and sends it; the
//! receiver checks the payload in place and drops the sample. Delivery is
//! lossless: `enable_safe_overflow(false)` with the `RetryUntilDelivered`
//! backpressure strategy, so a full subscriber queue makes the publisher wait
//! (in iceoryx2's own wait loop, which yields). In blocking rows each channel
//! also has an event service: the sender notifies after every send, the
//! receiver sleeps in `Listener::blocking_wait` when its queue is empty (the
//! pattern of iceoryx2's event-based-communication example).

use std::mem::MaybeUninit;

use anyhow::{anyhow, bail, Result};
use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::{event, publish_subscribe};

use crate::payload;
use crate::transport::{retry_until, ChannelSpec, Rx, System, Tx, Wait};

/// The iceoryx2 version this module was written against and is built with.
pub const VERSION: &str = "0.10.0";

type PubSub = publish_subscribe::PortFactory<ipc::Service, [u8], ()>;
type EventService = event::PortFactory<ipc::Service>;

/// iceoryx2 publish-subscribe.
#[derive(Debug, Clone, Copy, Default)]
pub struct Iceoryx2;

fn node() -> Result<Node<ipc::Service>> {
    NodeBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .map_err(|e| anyhow!("creating an iceoryx2 node: {e:?}"))
}

fn service_name(spec: &ChannelSpec, suffix: &str) -> Result<ServiceName> {
    let name = format!("shmbus-bench/{}/{}{suffix}", spec.run_id, spec.name);
    ServiceName::new(&name).map_err(|e| anyhow!("invalid iceoryx2 service name {name:?}: {e:?}"))
}

/// Both ends open-or-create the service with the same settings; the one
/// that loses a creation race retries.
fn open_pubsub(node: &Node<ipc::Service>, spec: &ChannelSpec) -> Result<PubSub> {
    let name = service_name(spec, "")?;
    retry_until(spec.connect_timeout, "the iceoryx2 service", || {
        match node
            .service_builder(&name)
            .publish_subscribe::<[u8]>()
            .max_publishers(1)
            .max_subscribers(spec.receivers)
            .subscriber_max_buffer_size(spec.depth)
            .subscriber_max_borrowed_samples(1)
            .history_size(0)
            .enable_safe_overflow(false)
            .open_or_create()
        {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                let text = format!("{e:?}");
                // Transient states while the other process creates or opens it.
                if text.contains("BeingCreated") || text.contains("InCorruptedState") {
                    Ok(None)
                } else {
                    Err(anyhow!("opening iceoryx2 service {name}: {text}"))
                }
            }
        }
    })
}

fn open_event(node: &Node<ipc::Service>, spec: &ChannelSpec) -> Result<EventService> {
    let name = service_name(spec, ".event")?;
    retry_until(
        spec.connect_timeout,
        "the iceoryx2 event service",
        || match node.service_builder(&name).event().open_or_create() {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                let text = format!("{e:?}");
                if text.contains("BeingCreated") || text.contains("InCorruptedState") {
                    Ok(None)
                } else {
                    Err(anyhow!("opening iceoryx2 event service {name}: {text}"))
                }
            }
        },
    )
}

impl System for Iceoryx2 {
    fn name(&self) -> &'static str {
        "iceoryx2"
    }

    fn notes(&self) -> &'static [&'static str] {
        &[
            "iceoryx2 0.10.0: ipc publish-subscribe of [u8] slices, loan_slice_uninit + send, \
           receive + check in place; lossless (safe overflow off, RetryUntilDelivered), so when \
           a subscriber queue is full the publisher waits in iceoryx2's own loop (sched_yield), \
           not the row's policy; at connect, empty probe samples are sent until one reaches \
           every subscriber and each subscriber has received one (a subscriber is counted before \
           its connection is usable, and a sample towards an unattached subscriber with a full \
           queue is dropped); \
           blocking row: an event service per channel, notify after each \
           send, Listener::blocking_wait when empty",
        ]
    }

    fn open_tx(&self, spec: &ChannelSpec) -> Result<Box<dyn Tx>> {
        let node = node()?;
        let service = open_pubsub(&node, spec)?;
        let publisher = service
            .publisher_builder()
            .initial_max_slice_len(spec.msg_len)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .map_err(|e| anyhow!("creating an iceoryx2 publisher: {e:?}"))?;
        let (event, notifier) = if spec.wait == Wait::Block {
            let event = open_event(&node, spec)?;
            let notifier = event
                .notifier_builder()
                .create()
                .map_err(|e| anyhow!("creating an iceoryx2 notifier: {e:?}"))?;
            (Some(event), Some(notifier))
        } else {
            (None, None)
        };
        retry_until(spec.connect_timeout, "iceoryx2 subscribers", || {
            let subs = service.dynamic_config().number_of_subscribers();
            let listeners = event
                .as_ref()
                .map_or(spec.receivers, |e| e.dynamic_config().number_of_listeners());
            Ok((subs >= spec.receivers && listeners >= spec.receivers).then_some(()))
        })?;
        // A subscriber is counted before the publisher's connection to it is
        // usable, and a sample sent in between reaches nobody. Send empty
        // probe samples (receivers skip them) until one reaches everybody.
        retry_until(
            spec.connect_timeout,
            "iceoryx2 connections to every subscriber",
            || {
                let probe = publisher
                    .loan_slice_uninit(0)
                    .map_err(|e| anyhow!("iceoryx2 loan failed: {e:?}"))?;
                // SAFETY: the slice has zero elements, so all of them are initialized.
                let probe = unsafe { probe.assume_init() };
                let delivered = probe
                    .send()
                    .map_err(|e| anyhow!("iceoryx2 send failed: {e:?}"))?;
                Ok((delivered >= spec.receivers).then_some(()))
            },
        )?;
        Ok(Box::new(IoxTx {
            publisher,
            notifier,
            _service: service,
            _event: event,
            _node: node,
            msg_len: spec.msg_len,
            receivers: spec.receivers,
        }))
    }

    fn open_rx(&self, spec: &ChannelSpec, _index: usize) -> Result<Box<dyn Rx>> {
        let node = node()?;
        let service = open_pubsub(&node, spec)?;
        let subscriber = service
            .subscriber_builder()
            .buffer_size(spec.depth)
            .create()
            .map_err(|e| anyhow!("creating an iceoryx2 subscriber: {e:?}"))?;
        let (event, listener) = if spec.wait == Wait::Block {
            let event = open_event(&node, spec)?;
            let listener = event
                .listener_builder()
                .create()
                .map_err(|e| anyhow!("creating an iceoryx2 listener: {e:?}"))?;
            (Some(event), Some(listener))
        } else {
            (None, None)
        };
        // Wait for the publisher's first probe: once one arrived, this
        // subscriber is connected and no data sample can bypass it.
        retry_until(
            spec.connect_timeout,
            "the iceoryx2 publisher's probe",
            || match subscriber
                .receive()
                .map_err(|e| anyhow!("iceoryx2 receive failed: {e:?}"))?
            {
                Some(sample) if sample.payload().is_empty() => Ok(Some(())),
                Some(_) => bail!("iceoryx2 data arrived before the connection probe"),
                None => Ok(None),
            },
        )?;
        Ok(Box::new(IoxRx {
            subscriber,
            listener,
            _service: service,
            _event: event,
            _node: node,
            msg_len: spec.msg_len,
        }))
    }
}

/// Fields drop in declaration order: ports, then services, then the node.
struct IoxTx {
    publisher: Publisher<ipc::Service, [u8], ()>,
    notifier: Option<Notifier<ipc::Service>>,
    _service: PubSub,
    _event: Option<EventService>,
    _node: Node<ipc::Service>,
    msg_len: usize,
    receivers: usize,
}

impl std::fmt::Debug for IoxTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoxTx")
            .field("msg_len", &self.msg_len)
            .field("receivers", &self.receivers)
            .finish_non_exhaustive()
    }
}

impl Tx for IoxTx {
    fn send(&mut self, seq: u64) -> Result<()> {
        let mut sample = self
            .publisher
            .loan_slice_uninit(self.msg_len)
            .map_err(|e| anyhow!("iceoryx2 loan failed: {e:?}"))?;
        let payload: &mut [MaybeUninit<u8>] = sample.payload_mut();
        if payload.len() != self.msg_len {
            bail!(
                "iceoryx2 loaned {} bytes, asked for {}",
                payload.len(),
                self.msg_len
            );
        }
        payload::write_uninit(seq, payload);
        // SAFETY: `write_uninit` initialized every element of the payload
        // slice, whose length was checked to be the loaned length.
        let sample = unsafe { sample.assume_init() };
        let delivered = sample
            .send()
            .map_err(|e| anyhow!("iceoryx2 send failed: {e:?}"))?;
        if delivered != self.receivers {
            bail!(
                "iceoryx2 delivered message {seq} to {delivered} subscribers, expected {}",
                self.receivers
            );
        }
        if let Some(n) = &self.notifier {
            n.notify()
                .map_err(|e| anyhow!("iceoryx2 notify failed: {e:?}"))?;
        }
        Ok(())
    }
}

/// Fields drop in declaration order: ports, then services, then the node.
struct IoxRx {
    subscriber: Subscriber<ipc::Service, [u8], ()>,
    listener: Option<Listener<ipc::Service>>,
    _service: PubSub,
    _event: Option<EventService>,
    _node: Node<ipc::Service>,
    msg_len: usize,
}

impl std::fmt::Debug for IoxRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoxRx")
            .field("msg_len", &self.msg_len)
            .finish_non_exhaustive()
    }
}

impl Rx for IoxRx {
    fn try_recv(&mut self) -> Result<Option<u64>> {
        loop {
            match self
                .subscriber
                .receive()
                .map_err(|e| anyhow!("iceoryx2 receive failed: {e:?}"))?
            {
                // A connection probe from `open_tx`; data messages are never empty.
                Some(sample) if sample.payload().is_empty() => continue,
                Some(sample) => return Ok(Some(payload::check(sample.payload(), self.msg_len)?)),
                None => return Ok(None),
            }
        }
    }

    fn recv_blocking(&mut self) -> Result<u64> {
        loop {
            if let Some(seq) = self.try_recv()? {
                return Ok(seq);
            }
            let Some(listener) = &self.listener else {
                bail!("iceoryx2 receiver was opened without a listener (not a blocking row)");
            };
            listener
                .blocking_wait(|_| {})
                .map_err(|e| anyhow!("iceoryx2 listener wait failed: {e:?}"))?;
        }
    }
}
