//! Support for the fuzz targets in `src/bin/`: reference decoders written
//! from the specs in `docs/` (never by calling the code under test), and
//! helpers that turn fuzzer bytes into test situations.
//!
//! Targets, how to run them and the campaign's figures: `fuzz/README.md`.
pub mod wire_ref;
