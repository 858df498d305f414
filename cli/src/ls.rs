//! `shmbus ls [PATTERN]`: topics, their publishers' rings and subscribers.

use std::{fmt::Write as _, process::ExitCode};

use crate::{
    model::{self, BusView, RingState, TopicView},
    text::{bytes, Table},
    Where,
};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Topics to show: a glob (`*`, `?`); all by default.
    pattern: Option<String>,
}

pub(crate) fn run(place: &Where, args: &Args) -> anyhow::Result<ExitCode> {
    place.bus_dir()?;
    let view = model::scan(&place.root(), &place.bus, args.pattern.as_deref())?;
    if place.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render(&view));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human listing.
pub(crate) fn render(view: &BusView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bus {} at {} — {} topic(s)",
        view.bus,
        view.path.display(),
        view.topics.len()
    );
    for topic in &view.topics {
        out.push('\n');
        render_topic(&mut out, topic);
    }
    out
}

fn render_topic(out: &mut String, topic: &TopicView) {
    let live = topic
        .rings
        .iter()
        .filter(|r| r.state == RingState::Live)
        .count();
    let _ = writeln!(
        out,
        "topic {}: {} ring(s), {live} live publisher(s)",
        topic.topic,
        topic.rings.len()
    );
    if !topic.rings.is_empty() {
        let mut t = Table::new(&[
            "PUBLISHER",
            "STATE",
            "PID",
            "POLICY",
            "CAPACITY",
            "MAX MSG",
            "PUBLISHED",
            "FULL",
            "EVICTED",
            "TYPE",
        ]);
        for ring in &topic.rings {
            match &ring.publisher {
                Some(p) => t.row(vec![
                    ring.publisher_id.clone(),
                    ring.state.as_str().into(),
                    p.pid.to_string(),
                    p.policy.into(),
                    bytes(p.capacity),
                    bytes(p.max_message),
                    p.published.to_string(),
                    p.full_events.to_string(),
                    p.evictions.to_string(),
                    format!(
                        "{} {}{}",
                        if p.type_name.is_empty() {
                            "(raw)"
                        } else {
                            &p.type_name
                        },
                        p.type_fingerprint,
                        if p.replica { " replica" } else { "" }
                    ),
                ]),
                None => t.row(vec![
                    ring.publisher_id.clone(),
                    ring.state.as_str().into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]),
            }
        }
        out.push_str(&t.render("  "));
    }
    for ring in &topic.rings {
        if let Some(reason) = &ring.reason {
            let _ = writeln!(out, "  ! {}: {reason}", ring.publisher_id);
        }
    }
    let subs: Vec<_> = topic
        .rings
        .iter()
        .flat_map(|r| r.subscribers.iter().map(move |s| (r, s)))
        .collect();
    if !subs.is_empty() {
        let mut t = Table::new(&[
            "SUBSCRIBER OF",
            "SLOT",
            "PID",
            "KIND",
            "ALIVE",
            "LAG",
            "LAG MSGS",
            "HELD",
            "DURABLE",
        ]);
        for (ring, s) in subs {
            t.row(vec![
                ring.publisher_id.clone(),
                s.slot.to_string(),
                // 0: a pre-joined slot, whose owner has not opened the ring.
                if s.pid == 0 {
                    "-".into()
                } else {
                    s.pid.to_string()
                },
                s.kind.into(),
                yes_no(s.alive).into(),
                bytes(s.lag_bytes),
                s.lag_messages.map_or("?".into(), |m| m.to_string()),
                yes_no(s.held).into(),
                yes_no(s.durable).into(),
            ]);
        }
        out.push_str(&t.render("  "));
    }
    for hold in &topic.holds {
        let _ = writeln!(
            out,
            "  hold {} (bridge replica kept for a restart; writer {}, {} s old{})",
            hold.path.display(),
            if hold.writer_gone { "gone" } else { "alive" },
            hold.age_s,
            hold.reason
                .as_deref()
                .map(|r| format!("; {r}"))
                .unwrap_or_default()
        );
    }
    for path in &topic.leftovers {
        let _ = writeln!(
            out,
            "  leftover {} (`shmbus gc` removes it)",
            path.display()
        );
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
