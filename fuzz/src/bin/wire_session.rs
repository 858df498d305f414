//! Fuzz target: the sans-IO connection machines, `ImportSession` (the
//! receiver half) and `ExportSession` (the sender half), driven by a
//! sequence of peer frames and local events decoded from the input.
//!
//! Input: `machine u8` (even: import, odd: export), then operations, each
//! an opcode byte and its arguments. The harness plays a correct caller
//! (it reports rings and sends the way the daemon does); the peer's frames
//! are arbitrary but well-formed (what the frame decoder can return).
//!
//! Import properties: DATA is accepted only for a subscribed, unended
//! stream, contiguous with what came before, of a valid length, never past
//! the newest credit granted, never while a gap waits for room, and its end
//! is exact (no wrap of positions); a frame that follows every rule is
//! never refused; credit only grows and never promises room the caller did
//! not report; ACKs never go back.
//!
//! Export properties: the caller following the requests never gets a
//! `ProgressError`; DATA is contiguous, never ends past the peer's credit
//! or the ring's tail, and is bounded by the frame size; a GAP reports the
//! exact sequence number at its end; END comes only once the publisher is
//! gone, at its last tail; a tethered export never releases what the peer
//! has not acknowledged, and an untethered one pins exactly while the
//! kernel holds its sends; an ACK past what was sent is refused.

use std::collections::BTreeMap;

use shmbus_bridge::proto::{
    frame::{DataHeader, End, Gap, Subscribe, MAX_DATA_LEN, RESUME_OLDEST},
    session::{
        export::{ExportConfig, ExportSession, Protection, RingEvent, RingView, Step, StreamInfo},
        import::{EndPlan, GapPlan, ImportSession, ImportViolation, Output, Refusal, Resume},
    },
    stream::ExportMode,
};

/// The fuzzer's bytes, read as little-endian values; `None` once used up.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// Next byte.
    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// Next `N` bytes as a little-endian number.
    fn le<const N: usize>(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(head.iter().rev().fold(0u64, |a, &b| (a << 8) | u64::from(b)))
    }

    /// Next u16.
    pub fn u16(&mut self) -> Option<u64> {
        self.le::<2>()
    }

    /// Next u32.
    pub fn u32(&mut self) -> Option<u64> {
        self.le::<4>()
    }

    /// Next u64.
    pub fn u64(&mut self) -> Option<u64> {
        self.le::<8>()
    }
}


/// Stream ids the operations name: few, so that operations meet.
const STREAMS: u8 = 4;
/// Ring records in the export harness are all this long; record n's
/// sequence number is its position / 16.
const RECORD: u64 = 16;

/// The largest position a peer's DATA, GAP or END may reach
/// (`docs/bridge-protocol.md`, "Positions").
const MAX_POS: u64 = 1 << 62;

/// A position: the expected one, a few records after or before it, or any.
fn position(input: &mut Input<'_>, expected: Option<u64>) -> Option<u64> {
    let base = expected.unwrap_or(0);
    Some(match input.u8()? % 4 {
        0 => base,
        1 => base.saturating_add(RECORD * input.u8()? as u64),
        2 => base.saturating_sub(RECORD * input.u8()? as u64),
        _ => input.u64()?,
    })
}

mod import {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum State {
        Undecided,
        Ignored,
        Held,
        Subscribed,
        Ended,
    }

    /// What the harness knows a stream's state must be.
    #[derive(Debug, Clone)]
    struct Model {
        state: State,
        capacity: u64,
        window: u64,
        /// Where the next frame must start (`None`: the first frame of a
        /// stream subscribed from the oldest data).
        expected: Option<u64>,
        /// The newest credit limit granted (`None`: the window is not
        /// placed yet).
        credit: Option<u64>,
        /// The largest room made known to the session.
        room: u64,
        applied: Option<u64>,
        gap_waiting: bool,
        end_pending: bool,
        last_ack: u64,
    }

    impl Model {
        fn new() -> Self {
            Self {
                state: State::Undecided,
                capacity: 0,
                window: 0,
                expected: None,
                credit: None,
                room: 0,
                applied: None,
                gap_waiting: false,
                end_pending: false,
                last_ack: 0,
            }
        }

        fn open(&self) -> bool {
            self.state == State::Subscribed && !self.end_pending
        }

        fn continues(&self, start: u64) -> bool {
            self.expected.map_or(start % RECORD == 0, |e| e == start)
        }

        fn slack(&self, input: &mut Input<'_>) -> u64 {
            input.u32().unwrap_or(0) % (self.capacity + 1)
        }
    }

    type Models = BTreeMap<u32, Model>;

    pub fn run(mut input: Input<'_>) {
        let mut s = ImportSession::new();
        let mut m = Models::new();
        while let Some(op) = input.u8() {
            let Some(id) = input.u8().map(|b| u32::from(b % STREAMS)) else { return };
            if step(&mut s, &mut m, op, id, &mut input).is_none() {
                return;
            }
            drain(&mut s, &mut m);
            for (&id, st) in &m {
                assert_eq!(s.is_subscribed(id), st.state == State::Subscribed, "stream {id}");
                assert_eq!(s.is_held(id), st.state == State::Held, "stream {id}");
            }
        }
    }

    /// One operation; `None` when the connection ends (a violation) or the
    /// input is used up.
    fn step(s: &mut ImportSession, m: &mut Models, op: u8, id: u32, input: &mut Input<'_>) -> Option<()> {
        match op % 9 {
            0 => {
                let r = s.on_announce(id);
                if m.contains_key(&id) {
                    assert!(matches!(r, Err(ImportViolation::AnnouncedTwice { .. })), "{r:?}");
                    return None;
                }
                r.expect("a first announce");
                m.insert(id, Model::new());
            }
            1 => {
                s.ignore(id);
                if let Some(st) = m.get_mut(&id).filter(|st| matches!(st.state, State::Undecided | State::Held)) {
                    st.state = State::Ignored;
                }
            }
            2 => {
                s.hold(id);
                if let Some(st) = m.get_mut(&id).filter(|st| st.state == State::Undecided) {
                    st.state = State::Held;
                }
            }
            3 => subscribe(s, m, id, input)?,
            4 => data(s, m, id, input)?,
            5 => gap(s, m, id, input)?,
            6 => {
                // The replica found room for the waiting gap.
                let st = m.get_mut(&id).filter(|st| st.gap_waiting)?;
                let to = st.expected.expect("a waiting gap set the position");
                assert!(s.pending_gaps().any(|g| g.stream == id && g.to == to));
                let room = to.saturating_add(st.slack(input));
                gap_applied(s, st, id, to, room);
            }
            7 => end(s, m, id, input)?,
            _ => {
                let _ = s.wants_room(id);
                let st = m.get_mut(&id).filter(|st| st.state == State::Subscribed)?;
                let applied = st.applied?;
                let room = applied.saturating_add(st.slack(input));
                st.room = st.room.max(room);
                s.room(id, room);
            }
        }
        Some(())
    }

    fn subscribe(s: &mut ImportSession, m: &mut Models, id: u32, input: &mut Input<'_>) -> Option<()> {
        let capacity = 1u64 << (4 + input.u8()? % 24);
        let ended = input.u8()? % 8 == 0;
        let resume = if input.u8()? % 2 == 0 {
            Resume::Oldest
        } else {
            let position = input.u32()? * RECORD;
            Resume::At { position, room_until: position + input.u32()? % (capacity + 1) }
        };
        let decidable = m.get(&id).is_some_and(|st| matches!(st.state, State::Undecided | State::Held));
        match s.subscribe(id, resume, capacity, ended) {
            Ok(()) => {
                assert!(decidable && !ended);
                let Some(Output::Subscribe(sub)) = s.poll_output() else {
                    panic!("no SUBSCRIBE queued");
                };
                let st = m.get_mut(&id).expect("decidable");
                assert_eq!(sub.stream, id);
                match resume {
                    Resume::Oldest => {
                        assert_eq!((sub.resume_position, sub.window), (RESUME_OLDEST, capacity));
                    }
                    Resume::At { position, room_until } => {
                        let limit = room_until.max(position);
                        assert_eq!((sub.resume_position, sub.window), (position, limit - position));
                        st.expected = Some(position);
                        st.applied = Some(position);
                        st.credit = Some(limit);
                        st.room = limit;
                    }
                }
                st.state = State::Subscribed;
                st.capacity = capacity;
                st.window = sub.window;
            }
            Err(Refusal::Ended) => {
                assert!(decidable && ended);
                m.get_mut(&id).expect("decidable").state = State::Ignored;
            }
            Err(Refusal::NotUndecided { .. }) => assert!(!decidable),
        }
        Some(())
    }

    fn data(s: &mut ImportSession, m: &mut Models, id: u32, input: &mut Input<'_>) -> Option<()> {
        let start = position(input, m.get(&id).and_then(|st| st.expected))?;
        let len = match input.u8()? % 3 {
            0 => RECORD * (1 + input.u8()? as u64),
            1 => RECORD * (1 + input.u16()?),
            _ => input.u32()? % (u64::from(MAX_DATA_LEN) + 1),
        } as u32;
        let h = DataHeader { stream: id, start_position: start, len };
        let st = m.get(&id);
        let legal = st.is_some_and(|st| {
            let limit = st.credit.unwrap_or(start.saturating_add(st.window));
            st.open()
                && !st.gap_waiting
                && st.continues(start)
                && len > 0
                && u64::from(len) % RECORD == 0
                && u64::from(len) <= st.capacity / 2
                && start.checked_add(u64::from(len)).is_some_and(|end| end <= limit && end <= MAX_POS)
        });
        match s.on_data(&h) {
            Ok(plan) => {
                assert!(legal, "accepted DATA {h:?} against {st:?}");
                let st = m.get_mut(&id).expect("legal");
                let end = start + u64::from(len);
                assert_eq!((plan.start, plan.len), (start, u64::from(len)));
                assert_eq!(plan.create_replica, st.applied.is_none());
                if st.credit.is_none() {
                    st.credit = Some(start.saturating_add(st.window));
                }
                if st.applied.is_none() {
                    st.room = st.room.max(start.saturating_add(st.capacity));
                }
                st.expected = Some(end);
                // The payload is read into the replica and published.
                let room = end.saturating_add(st.slack(input));
                st.applied = Some(end);
                st.room = st.room.max(room);
                s.data_applied(id, end, room);
                Some(())
            }
            Err(e) => {
                assert!(!legal, "refused a legal DATA {h:?}: {e}");
                None
            }
        }
    }

    fn gap(s: &mut ImportSession, m: &mut Models, id: u32, input: &mut Input<'_>) -> Option<()> {
        let from = position(input, m.get(&id).and_then(|st| st.expected))?;
        let to = match input.u8()? % 2 {
            0 => (from | (RECORD - 1)).checked_add(1 + RECORD * input.u16()?)?,
            _ => from.checked_add(1 + input.u32()?)?,
        };
        let g = Gap { stream: id, from, to, next_seq: input.u16()? };
        let st = m.get(&id);
        let legal = st.is_some_and(|st| st.open() && st.continues(from) && to % RECORD == 0 && to <= MAX_POS);
        let plan = match s.on_gap(&g) {
            Ok(plan) => plan,
            Err(e) => {
                assert!(!legal, "refused a legal GAP {g:?}: {e}");
                return None;
            }
        };
        assert!(legal, "accepted GAP {g:?} against {st:?}");
        let st = m.get_mut(&id).expect("legal");
        if st.credit.is_none() {
            st.credit = Some(from.saturating_add(st.window));
        }
        st.expected = Some(to);
        match plan {
            GapPlan::Apply { gap, within_room } => {
                assert_eq!(gap.to, to);
                assert!(gap.from <= from && (st.gap_waiting || gap.from == from));
                if !within_room {
                    assert!(gap.to - gap.from > st.capacity, "an out-of-room gap shorter than the ring");
                }
                let room = to.saturating_add(st.slack(input));
                gap_applied(s, st, id, to, room);
            }
            GapPlan::Wait => {
                let limit = st.credit.expect("placed above");
                assert!(to > limit && to > st.room, "a gap within the promised room waits");
                st.gap_waiting = true;
            }
        }
        Some(())
    }

    fn gap_applied(s: &mut ImportSession, st: &mut Model, id: u32, to: u64, room: u64) {
        let end = s.gap_applied(id, room);
        st.applied = Some(to);
        st.room = st.room.max(room);
        st.gap_waiting = false;
        if st.end_pending {
            let e = end.expect("the END waiting for the gap");
            assert_eq!((e.stream, Some(e.position)), (id, st.expected));
            st.state = State::Ended;
        } else {
            assert!(end.is_none());
        }
    }

    fn end(s: &mut ImportSession, m: &mut Models, id: u32, input: &mut Input<'_>) -> Option<()> {
        let p = position(input, m.get(&id).and_then(|st| st.expected))?;
        let st = m.get(&id);
        let legal = st.is_some_and(|st| st.open() && st.expected.is_none_or(|e| e == p) && p <= MAX_POS);
        match s.on_end(&End { stream: id, position: p }) {
            Ok(plan) => {
                assert!(legal, "accepted END at {p} against {st:?}");
                let st = m.get_mut(&id).expect("legal");
                match plan {
                    EndPlan::Finish { position } => {
                        assert!(!st.gap_waiting && position == p);
                        st.state = State::Ended;
                    }
                    EndPlan::AfterGap => {
                        assert!(st.gap_waiting);
                        st.end_pending = true;
                    }
                }
                Some(())
            }
            Err(e) => {
                assert!(!legal, "refused a legal END at {p}: {e}");
                None
            }
        }
    }

    /// Checks every frame the session asks to send.
    fn drain(s: &mut ImportSession, m: &mut Models) {
        while let Some(o) = s.poll_output() {
            match o {
                Output::Subscribe(sub) => panic!("SUBSCRIBE out of turn: {sub:?}"),
                Output::Credit(c) => {
                    let st = m.get_mut(&c.stream).expect("CREDIT for an unknown stream");
                    assert_eq!(st.state, State::Subscribed);
                    let old = st.credit.expect("CREDIT before the window was placed");
                    assert!(c.limit > old, "credit went from {old} to {}", c.limit);
                    assert!(c.limit <= st.room, "credit {} past the room {}", c.limit, st.room);
                    st.credit = Some(c.limit);
                }
                Output::Ack(a) => {
                    let st = m.get_mut(&a.stream).expect("ACK for an unknown stream");
                    assert!(a.position >= st.last_ack, "ACK went back");
                    st.last_ack = a.position;
                }
            }
        }
    }
}


mod export {
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
        let (Some(a), Some(b)) = (input.u8(), input.u8()) else { return };
        let config = ExportConfig { max_frame: RECORD * (1 + u64::from(a)), pin_deadline: 1000 * (1 + u64::from(b)) };
        let mut h = Harness { s: ExportSession::new(config), m: BTreeMap::new(), conn_bytes: 0, now: 0 };
        while let Some(op) = input.u8() {
            let Some(id) = input.u8().map(|b| u32::from(b % STREAMS)) else { return };
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
                    let legal = st.as_ref().is_some_and(|st| st.subscribed && p <= st.sent || st.retired_here);
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
                    let legal = st.as_ref().is_some_and(|st| st.subscribed || st.retired_here);
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
                        assert!(matches!(st.info.mode, ExportMode::Untethered { .. }) && !st.in_flight.is_empty());
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
                    mode: if b % 2 == 0 {
                        ExportMode::Tethered
                    } else {
                        ExportMode::Untethered { retention: RECORD * u64::from(b / 2) }
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
            let sub = Subscribe { stream: id, resume_position: resume, window };
            let view = self.m.get(&id).map(|st| RingView { start: 0, head: st.head, tail: st.tail });
            let r = self.s.on_subscribe(&sub, || view.filter(|_| ring_ready));
            let st = self.m.get_mut(&id);
            let fresh = st.as_ref().is_some_and(|st| st.announced && !st.subscribed && !st.retired_here);
            match (r, st) {
                (Ok(Some(start)), Some(st)) => {
                    assert!(fresh && ring_ready);
                    assert!(start % RECORD == 0 && start <= st.tail && start >= st.head.min(st.released));
                    if resume != RESUME_OLDEST {
                        assert!(resume % RECORD == 0 && resume <= st.tail);
                    }
                    let window_start = if resume == RESUME_OLDEST { start } else { resume };
                    st.credit = window_start.saturating_add(window);
                    (st.sent, st.acked, st.subscribed) = (start, start, true);
                }
                (Ok(None), _) => assert!(fresh && !ring_ready),
                (Ok(Some(_)), None) => panic!("subscribed an unknown stream"),
                (Err(_), st) => {
                    assert!(!fresh || resume % RECORD != 0 || st.is_some_and(|st| resume > st.tail));
                    self.close();
                }
            }
            Some(())
        }

        /// Reads the ring where the session asks and sends what it decides.
        fn read_and_send(&mut self, id: u32) {
            let Some(req) = self.s.next_read(id) else { return };
            let st = self.m.get_mut(&id).expect("read request for an unknown stream");
            assert!(st.subscribed && req.from == st.sent, "{req:?} against {st:?}");
            let event = if req.from < st.head {
                RingEvent::Lapped { head: st.head }
            } else if req.from < st.tail {
                let records = ((st.tail - req.from).min(req.max_len) / RECORD).max(1);
                RingEvent::Records { start: req.from, end: req.from + records * RECORD, records: records as u32, first_seq: req.from / RECORD }
            } else {
                RingEvent::Empty { at: req.from, next_seq: req.from / RECORD, publisher_gone: st.gone }
            };
            let step = self.s.on_ring(id, event).expect("the caller followed the request");
            match (step, event) {
                (Step::Data { start, end, records }, _) => {
                    assert_eq!(start, st.sent);
                    assert!(end <= st.credit, "DATA to {end} past the credit {}", st.credit);
                    assert!(end <= st.tail && u64::from(records) == (end - start) / RECORD);
                    let bound = self.s.config().max_frame.min(st.info.capacity / 2) & !(RECORD - 1);
                    assert!(end - start <= bound.max(RECORD), "DATA of {} bytes", end - start);
                    self.conn_bytes += 24 + (end - start) + 16;
                    self.s.on_data_sent(id, end, self.conn_bytes, self.now).expect("the step just decided");
                    st.sent = end;
                    st.in_flight.push(self.conn_bytes);
                }
                (Step::Gap(g), _) => {
                    assert!(g.from < g.to && g.to == st.sent && g.to <= st.tail, "{g:?} against {st:?}");
                    assert_eq!(g.next_seq, g.to / RECORD, "GAP's sequence number is not exact");
                    self.conn_bytes += 44;
                }
                (Step::End(e), _) => {
                    assert!(st.gone && e.position == st.tail && e.position == st.sent, "{e:?} against {st:?}");
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
                assert_eq!(self.s.kernel_busy(id), !st.in_flight.is_empty(), "stream {id}");
                match self.s.protection(id) {
                    Some(Protection::Release(r)) => {
                        assert!(r <= st.released.max(st.acked), "released {r} unacknowledged: {st:?}");
                        st.released = r;
                    }
                    Some(Protection::Pin(p)) => {
                        assert!(!st.in_flight.is_empty() && p <= st.sent, "pin {p}: {st:?}");
                        st.pin = Some(p);
                    }
                    Some(Protection::Unpinned) => {
                        assert!(st.in_flight.is_empty(), "unpinned with sends in flight: {st:?}");
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
                (st.announced, st.subscribed, st.retired_here, st.end_sent) = (false, false, false, None);
            }
        }
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut input = Input(data);
        match input.u8() {
            Some(m) if m % 2 == 0 => import::run(input),
            Some(_) => export::run(input),
            None => {}
        }
    });
}
