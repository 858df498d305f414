//! The receiver half: `ImportSession` against a model of each stream.

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
        self.expected
            .map_or(start.is_multiple_of(RECORD), |e| e == start)
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
        let Some(id) = input.u8().map(|b| u32::from(b % STREAMS)) else {
            return;
        };
        if step(&mut s, &mut m, op, id, &mut input).is_none() {
            return;
        }
        drain(&mut s, &mut m);
        for (&id, st) in &m {
            assert_eq!(
                s.is_subscribed(id),
                st.state == State::Subscribed,
                "stream {id}"
            );
            assert_eq!(s.is_held(id), st.state == State::Held, "stream {id}");
        }
    }
}

/// One operation; `None` when the connection ends (a violation) or the
/// input is used up.
fn step(
    s: &mut ImportSession,
    m: &mut Models,
    op: u8,
    id: u32,
    input: &mut Input<'_>,
) -> Option<()> {
    match op % 9 {
        0 => {
            let r = s.on_announce(id);
            if m.contains_key(&id) {
                assert!(
                    matches!(r, Err(ImportViolation::AnnouncedTwice { .. })),
                    "{r:?}"
                );
                return None;
            }
            r.expect("a first announce");
            m.insert(id, Model::new());
        }
        1 => {
            s.ignore(id);
            if let Some(st) = m
                .get_mut(&id)
                .filter(|st| matches!(st.state, State::Undecided | State::Held))
            {
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
    let ended = input.u8()?.is_multiple_of(8);
    let resume = if input.u8()?.is_multiple_of(2) {
        Resume::Oldest
    } else {
        let position = input.u32()? * RECORD;
        Resume::At {
            position,
            room_until: position + input.u32()? % (capacity + 1),
        }
    };
    let decidable = m
        .get(&id)
        .is_some_and(|st| matches!(st.state, State::Undecided | State::Held));
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
                Resume::At {
                    position,
                    room_until,
                } => {
                    let limit = room_until.max(position);
                    assert_eq!(
                        (sub.resume_position, sub.window),
                        (position, limit - position)
                    );
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
    let h = DataHeader {
        stream: id,
        start_position: start,
        len,
    };
    let st = m.get(&id);
    let legal = st.is_some_and(|st| {
        let limit = st.credit.unwrap_or(start.saturating_add(st.window));
        st.open()
            && !st.gap_waiting
            && st.continues(start)
            && len > 0
            && u64::from(len).is_multiple_of(RECORD)
            && u64::from(len) <= st.capacity / 2
            && start
                .checked_add(u64::from(len))
                .is_some_and(|end| end <= limit && end <= MAX_POS)
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
    let g = Gap {
        stream: id,
        from,
        to,
        next_seq: input.u16()?,
    };
    let st = m.get(&id);
    let legal = st.is_some_and(|st| {
        st.open() && st.continues(from) && to.is_multiple_of(RECORD) && to <= MAX_POS
    });
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
                assert!(
                    gap.to - gap.from > st.capacity,
                    "an out-of-room gap shorter than the ring"
                );
            }
            let room = to.saturating_add(st.slack(input));
            gap_applied(s, st, id, to, room);
        }
        GapPlan::Wait => {
            let limit = st.credit.expect("placed above");
            assert!(
                to > limit && to > st.room,
                "a gap within the promised room waits"
            );
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
    let legal =
        st.is_some_and(|st| st.open() && st.expected.is_none_or(|e| e == p) && p <= MAX_POS);
    match s.on_end(&End {
        stream: id,
        position: p,
    }) {
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
                assert!(
                    c.limit <= st.room,
                    "credit {} past the room {}",
                    c.limit,
                    st.room
                );
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
