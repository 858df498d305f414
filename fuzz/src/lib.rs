//! Support for the fuzz targets in `src/bin/`: reference decoders written
//! from the specs in `docs/` (never by calling the code under test), and
//! helpers that turn fuzzer bytes into test situations.
//!
//! Targets, how to run them and the campaign's figures: `fuzz/README.md`.

pub mod input;
pub mod layout_ref;
pub mod scratch;
pub mod seeds;
pub mod wire_ref;

/// The modes every `bus_*` target has besides fuzzing, chosen by its first
/// argument: `--write-seeds` writes its seed corpus (`seeds`), `--replay
/// FILE...` runs the files as inputs one after another in this process (a
/// crash that needs the state an earlier input left, as in AFL++'s
/// persistent mode, reproduces this way). Returns `false` when neither
/// mode was asked for: then fuzz.
pub fn other_modes(mut run: impl FnMut(&[u8]), seeds: impl FnOnce()) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--write-seeds") => seeds(),
        Some("--replay") => {
            for path in &args[1..] {
                eprintln!("input {path}");
                run(&std::fs::read(path).expect("read an input"));
            }
        }
        _ => return false,
    }
    true
}
