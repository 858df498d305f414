//! A DATA frame's payload, from the socket straight into its replica ring:
//! reserved without waiting (the session checked it against the credit),
//! read and authenticated in place, validated and only then published.

use crate::{
    io::frame_reader::ReadError,
    log,
    proto::{
        frame::{DataHeader, ErrorCode},
        session::import::DataPlan,
    },
};

use super::{Receiver, Step};

impl Receiver<'_> {
    pub(super) fn on_data(&mut self, h: DataHeader) -> Result<(), Step> {
        let plan: DataPlan = self.session.on_data(&h).map_err(|v| Step::violation(&v))?;
        let stop = self.link.stop_flag();
        let end = {
            let Self {
                keys,
                set,
                reader,
                sock,
                reader_done,
                ..
            } = self;
            let Some(st) = keys.get(&h.stream).and_then(|k| set.streams.get_mut(k)) else {
                return Err(Step::Close(format!("stream {} lost its state", h.stream)));
            };
            if plan.create_replica {
                st.open_replica(plan.start, None).map_err(|e| {
                    Step::Close(format!("cannot create a replica for {}: {e}", st.name()))
                })?;
            }
            let name = st.name();
            let Some(replica) = st.replica.as_mut() else {
                return Err(Step::Close(format!("{name} has no replica")));
            };
            let mut chunk = match replica.writer.try_reserve(plan.len) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    log::error!(
                        "no room in the replica of {name} for DATA [{}, {}) within the credit granted",
                        plan.start,
                        plan.start + plan.len
                    );
                    return Err(Step::Close(format!(
                        "no room in the replica of {name} for DATA within the credit granted: bookkeeping error"
                    )));
                }
                Err(e) => {
                    return Err(Step::Violation(
                        ErrorCode::Malformed,
                        format!("DATA for stream {} ({name}): {e}", h.stream),
                    ))
                }
            };
            {
                let (stamp, a, b) = chunk.buffers();
                *reader_done = true;
                // On failure the chunk is dropped uncommitted: nothing published.
                reader
                    .read_payload(sock, &mut [&mut stamp[..], a, b], stop)
                    .map_err(|e| match e {
                        ReadError::Auth(e) => Step::Auth(e),
                        e => Step::Close(e.to_string()),
                    })?;
            }
            let records = chunk.commit().map_err(|e| {
                Step::Violation(
                    ErrorCode::Malformed,
                    format!(
                        "DATA for stream {} ({name}) rejected, nothing published: {e}",
                        h.stream
                    ),
                )
            })?;
            let end = replica.writer.position();
            st.stats.bytes.add(plan.len);
            st.stats.messages.add(u64::from(records));
            st.stats.frames.add(1);
            st.stats.position.set(end);
            end
        };
        self.session.data_applied(h.stream, end, 0);
        // Ask the ring only when a CREDIT could follow: the gate refresh
        // walks the subscriber table.
        if self.session.wants_room(h.stream) {
            if let Some(room) = self.stream_mut(h.stream).and_then(|st| st.room_until()) {
                self.session.room(h.stream, room);
            }
        }
        Ok(())
    }
}
