//! The sender half: `ExportSession` against a ring and peer model.

use super::*;

/// A stream's ring and what the peer and the kernel hold of it.
#[derive(Debug, Clone)]
struct Model {
    info: StreamInfo,
    /// The ring: published tail, oldest intact position, publisher gone.
    tail: u64,
    head: u64,
    gone: bool,
    /// Protection applied: released (tethered), pinned from (untethered).
    released: u64,
    pin: Option<u64>,
    /// This connection.
    announced: bool,
    subscribed: bool,
    retired_here: bool,
    sent: u64,
    credit: u64,
    acked: u64,
    end_sent: Option<u64>,
    /// Connection offsets after each DATA send the kernel may still read.
    in_flight: Vec<u64>,
    /// END acknowledged and retired: never announced again.
    retired: bool,
}

struct Harness {
    s: ExportSession,
    m: BTreeMap<u32, Model>,
    conn_bytes: u64,
    now: u64,
}

pub fn run(mut input: Input<'_>) {
    let (Some(a), Some(b)) = (input.u8(), input.u8()) else {
        return;
    };
    let config = ExportConfig {
        max_frame: RECORD * (1 + u64::from(a)),
        pin_deadline: 1000 * (1 + u64::from(b)),
    };
    let mut h = Harness {
        s: ExportSession::new(config),
        m: BTreeMap::new(),
        conn_bytes: 0,
        now: 0,
    };
    while let Some(op) = input.u8() {
        let Some(id) = input.u8().map(|b| u32::from(b % STREAMS)) else {
            return;
        };
        if h.step(op, id, &mut input).is_none() {
            return;
        }
        h.apply_protection();
    }
}

impl Harness {
    fn step(&mut self, op: u8, id: u32, input: &mut Input<'_>) -> Option<()> {
        match op % 11 {
            0 => self.announce(id, input.u8()?),
            1 => self.subscribe(id, input)?,
            2 => {
                let p = position(input, self.m.get(&id).map(|st| st.sent))?;
                let r = self.s.on_ack(id, p);
                let st = self.m.get_mut(&id);
                let legal = st
                    .as_ref()
                    .is_some_and(|st| st.subscribed && p <= st.sent || st.retired_here);
                assert_eq!(r.is_ok(), legal, "ACK {p} against {st:?}: {r:?}");
                match (r, st) {
                    (Ok(()), Some(st)) if st.subscribed => st.acked = st.acked.max(p),
                    (Ok(()), _) => {}
                    (Err(_), _) => self.close(),
                }
            }
            3 => {
                let limit = position(input, self.m.get(&id).map(|st| st.sent))?;
                let r = self.s.on_credit(id, limit);
                let st = self.m.get_mut(&id);
                let legal = st
                    .as_ref()
                    .is_some_and(|st| st.subscribed || st.retired_here);
                assert_eq!(r.is_ok(), legal, "CREDIT against {st:?}: {r:?}");
                match (r, st) {
                    (Ok(()), Some(st)) if st.subscribed => st.credit = st.credit.max(limit),
                    (Ok(()), _) => {}
                    (Err(_), _) => self.close(),
                }
            }
            4 => self.read_and_send(id),
            5 => {
                let st = self.m.get_mut(&id)?;
                let room = match st.info.mode {
                    ExportMode::Tethered => st.released,
                    ExportMode::Untethered { .. } => st.pin.unwrap_or(u64::MAX - st.info.capacity),
                } + st.info.capacity;
                if !st.gone {
                    st.tail = (st.tail + RECORD * u64::from(input.u8()?)).min(room.max(st.tail));
                    st.head = st.head.max(st.tail.saturating_sub(st.info.capacity));
                }
            }
            6 => self.m.get_mut(&id)?.gone = true,
            7 => {
                // The kernel completes sends up to a connection offset.
                let upto = self.conn_bytes.saturating_sub(input.u16()?);
                for st in self.m.values_mut() {
                    st.in_flight.retain(|&end| end > upto);
                }
                self.s.on_connection_released(upto);
            }
            8 => {
                self.now += input.u32()?;
                if let Some(reset) = self.s.tick(self.now) {
                    let st = &self.m[&reset.stream];
                    assert!(
                        matches!(st.info.mode, ExportMode::Untethered { .. })
                            && !st.in_flight.is_empty()
                    );
                    assert!(reset.held_for >= self.s.config().pin_deadline);
                    self.close();
                }
            }
            9 => self.close(),
            _ => {
                for id in self.s.retirable() {
                    let st = self.m.get_mut(&id).expect("retirable stream");
                    let end = st.end_sent.expect("retirable without END");
                    assert!(st.acked >= end && st.in_flight.is_empty(), "{st:?}");
                    self.s.retire(id);
                    (st.retired, st.retired_here, st.subscribed) = (true, true, false);
                }
            }
        }
        Some(())
    }

    fn announce(&mut self, id: u32, b: u8) {
        let st = self.m.entry(id).or_insert_with(|| Model {
            info: StreamInfo {
                mode: if b.is_multiple_of(2) {
                    ExportMode::Tethered
                } else {
                    ExportMode::Untethered {
                        retention: RECORD * u64::from(b / 2),
                    }
                },
                capacity: 1 << (8 + (b / 2) % 6),
                max_record: RECORD * (1 + u64::from(b / 32)),
            },
            tail: 0,
            head: 0,
            gone: false,
            released: 0,
            pin: None,
            announced: false,
            subscribed: false,
            retired_here: false,
            sent: 0,
            credit: 0,
            acked: 0,
            end_sent: None,
            in_flight: Vec::new(),
            retired: false,
        });
        assert_eq!(self.s.should_announce(id), !st.announced && !st.retired);
        if !st.announced && !st.retired {
            self.s.on_announced(id, st.info);
            st.announced = true;
        }
    }

    fn subscribe(&mut self, id: u32, input: &mut Input<'_>) -> Option<()> {
        let resume = match input.u8()? % 3 {
            0 => RESUME_OLDEST,
            _ => position(input, self.m.get(&id).map(|st| st.acked))?,
        };
        let window = match input.u8()? % 2 {
            0 => RECORD * input.u16()?,
            _ => input.u64()?,
        };
        let ring_ready = input.u8()? % 8 != 0;
        let sub = Subscribe {
            stream: id,
            resume_position: resume,
            window,
        };
        let view = self.m.get(&id).map(|st| RingView {
            start: 0,
            head: st.head,
            tail: st.tail,
        });
        let r = self.s.on_subscribe(&sub, || view.filter(|_| ring_ready));
        let st = self.m.get_mut(&id);
        let fresh = st
            .as_ref()
            .is_some_and(|st| st.announced && !st.subscribed && !st.retired_here);
        match (r, st) {
            (Ok(Some(start)), Some(st)) => {
                assert!(fresh && ring_ready);
                assert!(
                    start.is_multiple_of(RECORD)
                        && start <= st.tail
                        && start >= st.head.min(st.released)
                );
                if resume != RESUME_OLDEST {
                    assert!(resume.is_multiple_of(RECORD) && resume <= st.tail);
                }
                let window_start = if resume == RESUME_OLDEST {
                    start
                } else {
                    resume
                };
                st.credit = window_start.saturating_add(window);
                (st.sent, st.acked, st.subscribed) = (start, start, true);
            }
            (Ok(None), _) => assert!(fresh && !ring_ready),
            (Ok(Some(_)), None) => panic!("subscribed an unknown stream"),
            (Err(_), st) => {
                assert!(
                    !fresh
                        || !resume.is_multiple_of(RECORD)
                        || st.is_some_and(|st| resume > st.tail)
                );
                self.close();
            }
        }
        Some(())
    }

    /// Reads the ring where the session asks and sends what it decides.
    fn read_and_send(&mut self, id: u32) {
        let Some(req) = self.s.next_read(id) else {
            return;
        };
        let st = self
            .m
            .get_mut(&id)
            .expect("read request for an unknown stream");
        assert!(
            st.subscribed && req.from == st.sent,
            "{req:?} against {st:?}"
        );
        let event = if req.from < st.head {
            RingEvent::Lapped { head: st.head }
        } else if req.from < st.tail {
            let records = ((st.tail - req.from).min(req.max_len) / RECORD).max(1);
            RingEvent::Records {
                start: req.from,
                end: req.from + records * RECORD,
                records: records as u32,
                first_seq: req.from / RECORD,
            }
        } else {
            RingEvent::Empty {
                at: req.from,
                next_seq: req.from / RECORD,
                publisher_gone: st.gone,
            }
        };
        let step = self
            .s
            .on_ring(id, event)
            .expect("the caller followed the request");
        match (step, event) {
            (
                Step::Data {
                    start,
                    end,
                    records,
                },
                _,
            ) => {
                assert_eq!(start, st.sent);
                assert!(
                    end <= st.credit,
                    "DATA to {end} past the credit {}",
                    st.credit
                );
                assert!(end <= st.tail && u64::from(records) == (end - start) / RECORD);
                let bound = self.s.config().max_frame.min(st.info.capacity / 2) & !(RECORD - 1);
                assert!(
                    end - start <= bound.max(RECORD),
                    "DATA of {} bytes",
                    end - start
                );
                self.conn_bytes += 24 + (end - start) + 16;
                self.s
                    .on_data_sent(id, end, self.conn_bytes, self.now)
                    .expect("the step just decided");
                st.sent = end;
                st.in_flight.push(self.conn_bytes);
            }
            (Step::Gap(g), _) => {
                assert!(
                    g.from < g.to && g.to == st.sent && g.to <= st.tail,
                    "{g:?} against {st:?}"
                );
                assert_eq!(
                    g.next_seq,
                    g.to / RECORD,
                    "GAP's sequence number is not exact"
                );
                self.conn_bytes += 44;
            }
            (Step::End(e), _) => {
                assert!(
                    st.gone && e.position == st.tail && e.position == st.sent,
                    "{e:?} against {st:?}"
                );
                st.end_sent = Some(e.position);
                self.conn_bytes += 36;
            }
            (Step::Withheld, RingEvent::Records { end, .. }) => assert!(end > st.credit),
            (Step::Withheld, other) => panic!("withheld on {other:?}"),
            (Step::Idle, RingEvent::Lapped { head }) => st.sent = st.sent.max(head & !(RECORD - 1)),
            (Step::Idle, _) => {}
        }
    }

    /// What the daemon does after every event: apply the protection
    /// the session asks for, and check it against what the peer holds.
    fn apply_protection(&mut self) {
        for (&id, st) in &mut self.m {
            if st.subscribed {
                assert_eq!(self.s.sent(id), Some(st.sent), "stream {id}");
            }
            assert_eq!(
                self.s.kernel_busy(id),
                !st.in_flight.is_empty(),
                "stream {id}"
            );
            match self.s.protection(id) {
                Some(Protection::Release(r)) => {
                    assert!(
                        r <= st.released.max(st.acked),
                        "released {r} unacknowledged: {st:?}"
                    );
                    st.released = r;
                }
                Some(Protection::Pin(p)) => {
                    assert!(!st.in_flight.is_empty() && p <= st.sent, "pin {p}: {st:?}");
                    st.pin = Some(p);
                }
                Some(Protection::Unpinned) => {
                    assert!(
                        st.in_flight.is_empty(),
                        "unpinned with sends in flight: {st:?}"
                    );
                    st.pin = None;
                }
                None => {}
            }
        }
    }

    /// The connection ends; the kernel is done with its sends.
    fn close(&mut self) {
        self.s.on_connection_released(self.conn_bytes);
        self.s.on_connection_closed();
        self.conn_bytes = 0;
        for st in self.m.values_mut() {
            st.in_flight.clear();
            (st.announced, st.subscribed, st.retired_here, st.end_sent) =
                (false, false, false, None);
        }
    }
}
