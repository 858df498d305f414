//! TODO

use std::process::ExitCode;

use crate::Where;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_place: &Where, _args: &Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
