//! Every relative link in the deployment guide (`docs/README.md` and the
//! pages it owns) points to a file that exists and, with a `#fragment`, to
//! a heading of that file (GitHub's anchor rules). `docs/layout.md` is
//! written in parallel by another change: links to it are checked once it
//! exists.

use std::path::{Path, PathBuf};

const PAGES: &[&str] = &[
    "README.md",
    "architecture.md",
    "policies.md",
    "sizing.md",
    "containers.md",
    "systemd.md",
    "two-hosts.md",
    "tuning.md",
    "troubleshooting.md",
];
const IN_PARALLEL: &str = "layout.md";

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// GitHub's anchor of a heading: lowercase, punctuation dropped, spaces
/// to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    let mut inside_code = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            inside_code = !inside_code;
        } else if !inside_code && line.starts_with('#') {
            out.push(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// The targets of `](target)` links outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut inside_code = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            inside_code = !inside_code;
            continue;
        }
        if inside_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
        }
    }
    out
}

#[test]
fn every_link_of_the_guide_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in PAGES {
        let path = docs().join(page);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
        for link in links(&text) {
            if link.starts_with("http") {
                continue;
            }
            let (file, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                path.clone()
            } else {
                docs().join(file)
            };
            if file == IN_PARALLEL && !target.exists() {
                eprintln!("{page}: {link}: {IN_PARALLEL} does not exist yet (written in parallel)");
                continue;
            }
            checked += 1;
            let Ok(body) = std::fs::read_to_string(&target) else {
                broken.push(format!("{page}: {link}: no such file"));
                continue;
            };
            if !fragment.is_empty() && !anchors(&body).iter().any(|a| a == fragment) {
                broken.push(format!("{page}: {link}: no heading with that anchor"));
            }
        }
    }
    assert!(checked > 30, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_follow_githubs_rules() {
    assert_eq!(
        anchor(" 6. Check that zero-copy works"),
        "6-check-that-zero-copy-works"
    );
    assert_eq!(
        anchor(" `shmbus doctor` findings"),
        "shmbus-doctor-findings"
    );
    assert_eq!(anchor(" Bridge: at start"), "bridge-at-start");
}
