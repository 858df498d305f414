//! Issue 7, "Two users": a bus in group mode shared by two uids. The
//! publisher's user owns the tree; a second uid, a member of the bus group
//! only through a supplementary group, subscribes and reads, but cannot
//! write the data file: `open(O_RDWR)` of `<id>.ring` fails with EACCES (the
//! data file is created without group write; the control file `<id>.ctl`
//! is the shared read-write one), and `mprotect(PROT_WRITE)` of the
//! subscriber library's own mapping of it fails with EACCES (opened
//! `O_RDONLY`, mapped `PROT_READ`). Group mode must work under the usual
//! umask 022 (the library sets the modes it asks for). A tree owned by another user is refused
//! in owner mode with an error naming it.
//!
//! Runs processes as other uids with `setpriv` (numeric ids, no passwd
//! entries needed). Skipped, with the reason printed, when not root or
//! `setpriv` is missing.

use std::time::Duration;

use shmbus::Bus;
use shmbus_tests::{
    harness::{parse_ready, TestEnv, LINE_TIMEOUT},
    isolation::{
        as_user, describe_tree, make_owned_dir, other_users_unavailable, skip, typical_umask,
        CONTROL_EXT, IDS,
    },
    msg::TestMsg,
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

#[test]
fn group_bus_second_user_reads_but_cannot_write_the_data_file() {
    let test = "two-users";
    if skip(test, other_users_unavailable()) {
        return;
    }
    let env = TestEnv::new(test, PEER, Duration::from_secs(90));
    // Group mode must give the group its access whatever the umask: test
    // under the usual 022, which takes group write away from plain creates.
    typical_umask();
    // The bus root: owned by the owner, group-shared, setgid so everything
    // made below it belongs to the bus group (what an admin sets up).
    let shared = env.root().join("shared");
    make_owned_dir(&shared, IDS.owner, IDS.group, 0o2770).expect("make the shared root");
    let owner = as_user(IDS.owner, IDS.group, &[IDS.group]);
    let other = as_user(IDS.other, IDS.other, &[IDS.group]);
    let topic = "t";

    let mut publisher = env.peer_with(
        "publisher",
        &owner,
        &shared,
        &[
            "publish",
            "--group",
            "--topic",
            topic,
            "--id",
            "1",
            "--count",
            "200",
            "--size",
            "64",
            "--wait-subscribers",
            "1",
            "--linger",
        ],
    );
    let (_, data) = parse_ready(&publisher.expect_line("ready", LINE_TIMEOUT));

    let mut sub = env.peer_with(
        "second-user",
        &other,
        &shared,
        &[
            "subscribe",
            "--group",
            "--topic",
            topic,
            "--expect-publishers",
            "1",
            "--exit-after",
            "200",
            "--timeout-s",
            "20",
        ],
    );
    let finished = sub.expect_line("finished", Duration::from_secs(40));
    let status = sub.wait(LINE_TIMEOUT);
    assert!(
        status.success() && finished == "finished received=200 lost=0 errors=0",
        "the second user could not read the group bus ({status}): {}{}",
        sub.describe(),
        describe_tree(&shared)
    );
    publisher.expect_line("lingering", LINE_TIMEOUT);

    let data_arg = data.display().to_string();
    let mut access = env.peer_with(
        "second-user-access",
        &other,
        &shared,
        &["access", "--group", "--topic", topic, "--file", &data_arg],
    );
    access.collect_output(LINE_TIMEOUT);
    access.wait_ok(LINE_TIMEOUT);
    let lines = access.lines_seen().to_vec();
    let tree = describe_tree(&shared);
    assert!(
        lines.iter().any(|l| l == "map-read ok"),
        "the second user cannot map the data file read-only: {lines:?}{tree}"
    );
    assert!(
        lines.iter().any(|l| l == "open-rdwr errno=EACCES"),
        "the second user's open(O_RDWR) of the data file did not fail with EACCES: {lines:?}{tree}"
    );
    assert!(
        lines.iter().any(|l| l == "own-mprotect-write errno=EACCES"),
        "the second user's mprotect(PROT_WRITE) of the subscriber's own mapping of the data \
         file did not fail with EACCES (it must be opened O_RDONLY, mapped PROT_READ): \
         {lines:?}{tree}"
    );
    let control = data.with_extension(CONTROL_EXT);
    assert!(
        control.is_file(),
        "no control file {} beside the data file (layout: <id>.ring + <id>.ctl){tree}",
        control.display()
    );

    publisher.close_stdin();
    publisher.wait_ok(LINE_TIMEOUT);
}

#[test]
fn tree_of_another_user_is_refused_in_owner_mode() {
    let test = "foreign-tree";
    if skip(test, other_users_unavailable()) {
        return;
    }
    let env = TestEnv::new(test, PEER, Duration::from_secs(60));
    let foreign = env.root().join("foreign");
    make_owned_dir(&foreign, IDS.owner, IDS.group, 0o2770).expect("make the foreign root");

    // This process (root) in owner mode: the tree belongs to someone else.
    let bus = Bus::builder()
        .root(&foreign)
        .build()
        .expect("building checks names only");
    let err = match bus.subscriber::<TestMsg>("t") {
        Ok(_) => panic!(
            "owner mode accepted a tree owned by uid {}:{}",
            IDS.owner,
            describe_tree(&foreign)
        ),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&foreign.display().to_string()) && err.to_lowercase().contains("own"),
        "the refusal does not name the tree and its owner: {err}"
    );
    let err = match bus.publisher::<TestMsg>("t") {
        Ok(_) => panic!("owner mode let a publisher into a tree owned by another user"),
        Err(e) => e.to_string(),
    };
    assert!(err.to_lowercase().contains("own"), "{err}");

    // A second, unprivileged user in owner mode, in the bus group: refused
    // too, with an error (not a subscription that waits and times out).
    let other = as_user(IDS.other, IDS.other, &[IDS.group]);
    let mut sub = env.peer_with(
        "second-user",
        &other,
        &foreign,
        &[
            "subscribe",
            "--topic",
            "t",
            "--expect-publishers",
            "1",
            "--timeout-s",
            "3",
        ],
    );
    let line = sub.expect_line("error", Duration::from_secs(20));
    let _ = sub.wait(LINE_TIMEOUT);
    assert!(
        !line.contains("kind=timeout") && line.to_lowercase().contains("own"),
        "a second user in owner mode was not refused: {line}\n{}",
        sub.describe()
    );
}
