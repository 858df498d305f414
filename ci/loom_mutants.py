#!/usr/bin/env python3
"""Mutation run for the loom models (driven by ci/loom-mutants.sh).

For every `SYNC:`-labelled ordering or fence in bus/src, weaken it in a
scratch copy of the tree, build the loom models and run them until one fails.
A mutant counts as caught only if a model fails for a reason other than a
loom limit (branches, permutations) or a timeout, and only if it compiled.
Survivors fail the run unless ci/loom-mutants.exempt lists them, with a reason.

Finding the sites (mechanically, from the source text):
- a `//` comment containing `SYNC:` labels the statements that follow its
  comment block: the consecutive code lines up to a blank line, a comment
  line or a lone closing brace (at most 6 lines);
- a `///` doc comment containing `SYNC:` on a `fn` whose body has no `SYNC:`
  comment of its own labels that body's first fence, or else its first
  non-Relaxed ordering;
- other doc comments (`//!`, fields) only name a pair: no site.
In a site's lines, every `Ordering::Release/Acquire/AcqRel` becomes Relaxed,
every `fence(Ordering::SeqCst/AcqRel/Acquire/Release)` is removed, and every
`load_acquire_ro(..)` becomes a plain Relaxed load (the fence it carries
removed at that call). SeqCst accesses are not mutated (loom models them as
AcqRel; the protocol's SeqCst is in its fences). The fences inside
`sync::load_acquire_ro`/`load_acquire_ro32` are mutated too (every caller at
once).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ORDER_RE = re.compile(r"Ordering::(Release|Acquire|AcqRel)\b")
FENCE_RE = re.compile(r"\bfence\(Ordering::(SeqCst|AcqRel|Acquire|Release)\);")
LOAD_RO_RE = re.compile(r"\bload_acquire_ro(32)?\(")
LIMIT_MARKERS = (
    "Model exceeded maximum number of branches",
    "exceeded maximum number of permutations",
    "max_permutations",
    "Model exceeded",
)

# Models to try first for each pair (the rest follow, fastest first).
ALL_MODELS = [
    "loom_publish_consume_visibility_and_wrap",
    "loom_wrap_with_padding_record",
    "loom_wrap_with_long_padding_record",
    "loom_leave_races_the_gate",
    "loom_no_missed_wakeup",
    "loom_wake_membarrier_handshake",
    "loom_wake_fence_handshake",
    "loom_wake_coalesced_two_sleepers",
    "loom_untethered_pin_protects_what_it_reads",
    "loom_eviction_never_overwrites_a_held_record",
    "loom_evicted_holder_releases_its_sample",
    "loom_durable_lease_expires",
    "loom_replica_commit_raw_and_gap",
    "loom_replica_skip_across_the_lap_end",
    "loom_durable_slot_reattaches_without_loss",
    "loom_prejoined_slots_adopted_or_dropped",
    "loom_join_races_the_gate",
    "loom_observer_gap_record_lapped",
    "loom_overwrite_seqlock_copies",
    "loom_crashed_owner_before_its_claim",
    "loom_observer_copies",
    "loom_crashed_owner_after_its_claim",
    "loom_batched_release_empty_unblocks_the_writer",
    "loom_batched_release_hint_and_held_record",
    "loom_batched_reader_and_joiner_against_the_gate",
]
FIRST = {
    "commit": ["loom_publish_consume_visibility_and_wrap", "loom_wrap_with_padding_record",
               "loom_wrap_with_long_padding_record",
               "loom_replica_commit_raw_and_gap", "loom_replica_skip_across_the_lap_end",
               "loom_overwrite_seqlock_copies"],
    "tail-publish": ["loom_join_races_the_gate", "loom_replica_commit_raw_and_gap",
                     "loom_overwrite_seqlock_copies", "loom_observer_copies"],
    "head-advance": ["loom_join_races_the_gate", "loom_observer_gap_record_lapped",
                     "loom_overwrite_seqlock_copies", "loom_observer_copies"],
    "release-position": ["loom_leave_races_the_gate", "loom_publish_consume_visibility_and_wrap",
                         "loom_join_races_the_gate", "loom_durable_slot_reattaches_without_loss"],
    "join-limit": ["loom_join_races_the_gate", "loom_untethered_pin_protects_what_it_reads"],
    "hold-evict": ["loom_eviction_never_overwrites_a_held_record",
                   "loom_evicted_holder_releases_its_sample",
                   "loom_untethered_pin_protects_what_it_reads"],
    "wake-handshake": ["loom_wake_membarrier_handshake", "loom_wake_fence_handshake",
                       "loom_no_missed_wakeup", "loom_wake_coalesced_two_sleepers"],
    "wake-coalesce": ["loom_wake_coalesced_two_sleepers", "loom_wake_membarrier_handshake"],
    "slot-claim": ["loom_join_races_the_gate", "loom_prejoined_slots_adopted_or_dropped",
                   "loom_durable_slot_reattaches_without_loss"],
}
# A per-commit run (--quick) tries only the models named for the pair, and
# counts a mutant nobody of those catches as caught=unknown (not a failure);
# the full run (default) tries all of them and fails on survivors.


def rust_files():
    base = os.path.join(ROOT, "bus", "src")
    for d, _, files in os.walk(base):
        for f in sorted(files):
            # Models and test-only code are not the protocol.
            if f.endswith(".rs") and f not in ("loom_tests.rs", "tests.rs", "heap.rs"):
                yield os.path.relpath(os.path.join(d, f), ROOT)


def is_comment(line):
    return line.strip().startswith("//")


def label_of(text):
    m = re.search(r"SYNC:\s*`?([a-z][a-z-]*)", text)
    return m.group(1) if m else "(unnamed)"


def fn_body(lines, start):
    """Lines (index range) of the body of the fn declared at or after `start`."""
    i = start
    while i < len(lines) and "{" not in lines[i]:
        i += 1
    depth, j = 0, i
    while j < len(lines):
        depth += lines[j].count("{") - lines[j].count("}")
        if depth == 0:
            return i, j
        j += 1
    return i, j


def enclosing_fn(lines, k):
    """The name of the fn whose body holds line k (the nearest fn above)."""
    for j in range(k, -1, -1):
        m = re.search(r"\bfn\s+(\w+)", lines[j])
        if m and not lines[j].strip().startswith("//"):
            return m.group(1)
    return "?"


def mutations_in(line):
    """(kind, start, end, replacement) for every weakening in `line`."""
    code = line.split("//")[0]
    out = []
    for m in FENCE_RE.finditer(code):
        out.append((f"fence({m.group(1)}) removed", m.start(), m.end(), "/* mutant: fence removed */"))
    fence_spans = [(s, e) for _, s, e, _ in out]
    for m in ORDER_RE.finditer(code):
        if any(s <= m.start() < e for s, e in fence_spans):
            continue
        out.append((f"{m.group(1)} -> Relaxed", m.start(), m.end(), "Ordering::Relaxed"))
    for m in LOAD_RO_RE.finditer(code):
        bits = m.group(1) or ""
        out.append((f"load_acquire_ro{bits} -> Relaxed load", m.start(), m.end(),
                    f"crate::sync::mutant_load_relaxed{bits}("))
    return out


def find_sites():
    sites = []  # dicts: file, line (1-based), label, text, kind, start, end, repl
    seen = set()
    for path in rust_files():
        lines = open(os.path.join(ROOT, path)).read().split("\n")
        for i, line in enumerate(lines):
            if "SYNC:" not in line:
                continue
            s = line.strip()
            label = label_of(line)
            targets = []
            if s.startswith("//!"):
                continue
            if s.startswith("///"):
                j = i
                while j < len(lines) and lines[j].strip().startswith("///"):
                    j += 1
                while j < len(lines) and lines[j].strip().startswith("#["):
                    j += 1
                if j >= len(lines) or not re.search(r"\bfn\b", lines[j]):
                    continue  # a field or type: names a pair only
                b0, b1 = fn_body(lines, j)
                body = range(b0 + 1, b1)
                if any("SYNC:" in lines[k] and is_comment(lines[k]) for k in body):
                    continue  # the body labels its own sites
                fences = [k for k in body if FENCE_RE.search(lines[k].split("//")[0])]
                orders = [k for k in body if ORDER_RE.search(lines[k].split("//")[0])]
                pick = (fences or orders)[:1]
                targets = [(k, [m for m in mutations_in(lines[k])
                                if (fences and m[0].startswith("fence")) or not fences][:1])
                           for k in pick]
            else:
                if not s.startswith("//"):
                    # A trailing comment: the line itself.
                    code_lines = [i]
                else:
                    j = i + 1
                    while j < len(lines) and is_comment(lines[j]):
                        j += 1
                    code_lines = []
                    while (j < len(lines) and len(code_lines) < 6 and lines[j].strip()
                           and not is_comment(lines[j]) and lines[j].strip() not in ("}", "};")):
                        code_lines.append(j)
                        j += 1
                targets = [(k, mutations_in(lines[k])) for k in code_lines]
            for k, muts in targets:
                for kind, a, b, repl in muts:
                    key = (path, k, a)
                    if key in seen:
                        continue
                    seen.add(key)
                    sites.append(dict(file=path, line=k + 1, label=label,
                                      text=f"{enclosing_fn(lines, k)}: {lines[k].strip()}",
                                      kind=kind, start=a, end=b, repl=repl))
    # The fences that give load_acquire_ro/load_acquire_ro32 their Acquire.
    sync = "bus/src/sync.rs"
    lines = open(os.path.join(ROOT, sync)).read().split("\n")
    for k, line in enumerate(lines):
        if re.search(r"fn load_acquire_ro(32)?\(", line):
            b0, b1 = fn_body(lines, k)
            for j in range(b0, b1):
                for kind, a, b, repl in mutations_in(lines[j]):
                    if kind.startswith("fence"):
                        sites.append(dict(file=sync, line=j + 1,
                                          label="(every load_acquire_ro" + ("32" if "32" in line else "") + ")",
                                          text=f"{enclosing_fn(lines, j)}: {lines[j].strip()}",
                                          kind=kind, start=a, end=b, repl=repl))
    return sites


def load_exemptions():
    path = os.path.join(ROOT, "ci", "loom-mutants.exempt")
    out = []
    for raw in open(path):
        raw = raw.rstrip("\n")
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in raw.split("|")]
        if len(parts) != 3 or not parts[2]:
            sys.exit(f"loom-mutants.exempt: want 'file | fn: start of line, or * | reason': {raw}")
        out.append(parts)
    return out


def exemption(site, exemptions):
    for f, pat, reason in exemptions:
        if f == site["file"] and (pat == "*" or site["text"].startswith(pat)):
            return reason
    return None


MUTANT_HELPERS = """
// Added by ci/loom_mutants.py: a load_acquire_ro without its fence.
#[allow(dead_code)]
pub(crate) fn mutant_load_relaxed(word: &AtomicU64) -> u64 {
    word.load(Ordering::Relaxed)
}
#[allow(dead_code)]
pub(crate) fn mutant_load_relaxed32(word: &AtomicU32) -> u32 {
    word.load(Ordering::Relaxed)
}
"""


def prepare_scratch(scratch):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    if os.path.exists(scratch):
        shutil.rmtree(scratch)
    for f in files:
        if not f or not os.path.exists(os.path.join(ROOT, f)):
            continue
        dst = os.path.join(scratch, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), dst)
    with open(os.path.join(scratch, "bus", "src", "sync.rs"), "a") as fh:
        fh.write(MUTANT_HELPERS)


def build(scratch, target, env):
    p = subprocess.run(
        ["cargo", "test", "-p", "shmbus-bus", "--release", "--lib", "--no-run",
         "--message-format=json"],
        cwd=scratch, env=dict(env, CARGO_TARGET_DIR=target), capture_output=True, text=True)
    exe = None
    for line in p.stdout.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("executable") and m.get("profile", {}).get("test"):
            exe = m["executable"]
    if p.returncode != 0 or not exe:
        errs = [json.loads(l).get("message", {}).get("rendered", "") for l in p.stdout.splitlines()
                if l.startswith("{") and '"compiler-message"' in l]
        return None, "\n".join(e for e in errs if e.startswith("error"))[:2000] or p.stderr[-2000:]
    return exe, ""


def run_model(exe, name, env, timeout):
    t = time.time()
    try:
        p = subprocess.run([exe, "--exact", f"ring::loom_tests::{name}"], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.time() - t
    out = p.stdout + p.stderr
    if p.returncode == 0:
        if "1 passed" not in out:
            return "missing", "", time.time() - t
        return "pass", "", time.time() - t
    why = ""
    lines = out.splitlines()
    for k, l in enumerate(lines):
        if "panicked at" in l:
            why = " ".join(x.strip() for x in lines[k + 1:k + 4]
                           if x.strip() and "stack backtrace" not in x and "note:" not in x
                           and not re.match(r"\s*(\d+:|at )", x))
            break
    if any(m in out for m in LIMIT_MARKERS):
        return "limit", why, time.time() - t
    return "fail", why, time.time() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", action="store_true", help="list the sites and exit")
    ap.add_argument("--quick", action="store_true",
                    help="per-commit subset: only the models named for each pair")
    ap.add_argument("--only", help="run only sites whose file:line contains this")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per model run")
    ap.add_argument("--report", default=os.path.join(ROOT, "target", "loom-mutants.md"))
    args = ap.parse_args()

    sites = find_sites()
    exemptions = load_exemptions()
    if args.only:
        sites = [s for s in sites if args.only in f"{s['file']}:{s['line']}"]
    if args.list:
        for n, s in enumerate(sites, 1):
            ex = exemption(s, exemptions)
            print(f"{n:3} {s['file']}:{s['line']} [{s['label']}] {s['kind']}: {s['text']}"
                  + (f"  -- EXEMPT: {ex}" if ex else ""))
        return 0

    env = dict(os.environ)
    env["RUSTFLAGS"] = "--cfg loom " + env.get("RUSTFLAGS", "")
    env.setdefault("LOOM_MAX_PREEMPTIONS", "2")
    env.setdefault("RUST_BACKTRACE", "0")
    env.setdefault("CARGO_PROFILE_RELEASE_DEBUG", "false")
    env.setdefault("CARGO_PROFILE_RELEASE_INCREMENTAL", "true")
    scratch = os.path.join(ROOT, "target", "loom-mutants-tree")
    target = os.path.join(ROOT, "target", "loom-mutants")
    prepare_scratch(scratch)

    t0 = time.time()
    # The unmutated tree must build (ci/loom.sh runs the models on it first).
    exe, err = build(scratch, target, env)
    if not exe:
        print(err)
        sys.exit("loom-mutants: the unmutated tree does not build")
    rows, bad = [], 0
    for n, s in enumerate(sites, 1):
        where = f"{s['file']}:{s['line']}"
        ex = exemption(s, exemptions)
        row = dict(n=n, where=where, label=s["label"], kind=s["kind"], text=s["text"])
        if ex:
            row.update(result="exempt", by=ex)
            rows.append(row)
            print(f"[{n}/{len(sites)}] {where} {s['kind']}: exempt ({ex})", flush=True)
            continue
        path = os.path.join(scratch, s["file"])
        original = open(path).read()
        lines = original.split("\n")
        line = lines[s["line"] - 1]
        lines[s["line"] - 1] = line[:s["start"]] + s["repl"] + line[s["end"]:]
        open(path, "w").write("\n".join(lines))
        t = time.time()
        try:
            exe, err = build(scratch, target, env)
            if not exe:
                row.update(result="SURVIVED", by="did not compile: " + err.splitlines()[0] if err else "")
                bad += 1
            else:
                order = list(FIRST.get(s["label"], []))
                if not args.quick or not order:
                    order += [m for m in ALL_MODELS if m not in order]
                tried = []
                row.update(result="SURVIVED", by="")
                for model in order:
                    res, why, dt = run_model(exe, model, env, args.timeout)
                    tried.append(f"{model}:{res}")
                    if res == "fail":
                        row.update(result="caught", by=f"{model} ({dt:.1f}s): {why[:160]}")
                        break
                if row["result"] != "caught":
                    if args.quick and FIRST.get(s["label"]):
                        row.update(result="not caught by its pair's models (run the full set)",
                                   by=", ".join(tried))
                    else:
                        row["by"] = ", ".join(tried)
                        bad += 1
        finally:
            open(path, "w").write(original)
        row["secs"] = time.time() - t
        rows.append(row)
        print(f"[{n}/{len(sites)}] {where} {s['kind']}: {row['result']} {row['by']} "
              f"({row['secs']:.0f}s)", flush=True)

    total = time.time() - t0
    with open(args.report, "w") as fh:
        fh.write(f"| # | site | pair | mutant | result | model that failed, or reason |\n")
        fh.write("|---|---|---|---|---|---|\n")
        for r in rows:
            by = r["by"].replace("|", "\\|")
            fh.write(f"| {r['n']} | `{r['where']}` | {r['label']} | {r['kind']} | {r['result']} | {by} |\n")
        fh.write(f"\nTotal: {total:.0f} s, LOOM_MAX_PREEMPTIONS={env['LOOM_MAX_PREEMPTIONS']}"
                 f"{', quick' if args.quick else ''}.\n")
    print(open(args.report).read())
    if bad:
        print(f"loom-mutants: {bad} mutant(s) survived and are not exempt", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
