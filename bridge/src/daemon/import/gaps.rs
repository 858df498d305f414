//! GAP and END of imported streams: applied to their replicas as the
//! session decides (a gap waits for room, an END for the gap before it),
//! counted and logged once each.

use crate::{
    log,
    proto::{
        frame::{End, ErrorCode, Gap},
        session::import::{EndPlan, GapPlan},
    },
};

use super::{
    streams::{GapError, GapOutcome},
    Receiver, Step, STARVED_SLICE,
};

impl Receiver<'_> {
    pub(super) fn on_gap(&mut self, g: Gap) -> Result<(), Step> {
        match self.session.on_gap(&g).map_err(|v| Step::violation(&v))? {
            GapPlan::Apply { gap, within_room } => {
                self.apply_gap(&gap, within_room)?;
                if self.session.pending_gaps().next().is_some() {
                    self.set_slice(STARVED_SLICE);
                }
                Ok(())
            }
            GapPlan::Wait => {
                // Retried on every sweep from now on.
                self.set_slice(STARVED_SLICE);
                if let Some(st) = self.stream_mut(g.stream) {
                    log::info!(
                        "gap [{}, {}) of {} waits for local subscribers to make room",
                        g.from,
                        g.to,
                        st.name()
                    );
                }
                Ok(())
            }
        }
    }

    /// Applies a pending gap; `must_fit`: it lies within room promised or
    /// reported, so no room is this bridge's bookkeeping error.
    pub(super) fn apply_gap(&mut self, g: &Gap, must_fit: bool) -> Result<(), Step> {
        let peer = self.peer.name.clone();
        let Some(st) = self.stream_mut(g.stream) else {
            return Err(Step::Close(format!("stream {} lost its state", g.stream)));
        };
        let outcome = st.apply_gap(g).map_err(|e| match e {
            GapError::Refused(why) => Step::Violation(
                ErrorCode::UnexpectedFrame,
                format!("GAP for stream {}: {why}", g.stream),
            ),
            GapError::Failed(why) => {
                Step::Close(format!("cannot apply a gap of {}: {why}", st.name()))
            }
        })?;
        match outcome {
            GapOutcome::NoRoom if must_fit => Err(Step::Close(format!(
                "no room for the gap [{}, {}) of {} although it lies within the room granted: bookkeeping error",
                g.from,
                g.to,
                st.name()
            ))),
            GapOutcome::NoRoom | GapOutcome::NoRoomForCount => Ok(()),
            GapOutcome::Applied {
                lost,
                room_until,
                new_replica,
            } => {
                st.stats.gaps.add(1);
                st.stats.gap_bytes.add(g.to - g.from);
                st.stats.lost_messages.add(lost.unwrap_or(0));
                st.stats.position.set(g.to);
                let count = lost.map_or_else(
                    || "an unknown number of messages (the replica's numbering was not known yet)".to_owned(),
                    |n| format!("{n} messages"),
                );
                log::warning!(
                    "gap: {} bytes [{}, {}) from {peer} were lost before they were sent (untethered export): {count} lost, told to local subscribers{}",
                    st.name(),
                    g.from,
                    g.to,
                    if new_replica { " (continuing in a new replica)" } else { "" }
                );
                if let Some(end) = self.session.gap_applied(g.stream, room_until) {
                    self.finish_end(&end);
                }
                Ok(())
            }
        }
    }

    pub(super) fn on_end(&mut self, e: End) -> Result<(), Step> {
        match self.session.on_end(&e).map_err(|v| Step::violation(&v))? {
            EndPlan::Finish { position } => {
                self.finish_end(&End {
                    stream: e.stream,
                    position,
                });
            }
            EndPlan::AfterGap => {}
        }
        Ok(())
    }

    fn finish_end(&mut self, e: &End) {
        let peer = self.peer.name.clone();
        if let Some(st) = self.stream_mut(e.stream) {
            st.finish(e.position);
            log::info!("{} from {peer} ended at position {}", st.name(), e.position);
        }
    }
}
