//! `classe demo`: filled in below.
use clap::Args;

use crate::exit::Exit;

#[derive(Debug, Args)]
pub struct DemoArgs {}

pub async fn run(_args: DemoArgs) -> Result<(), Exit> {
    Err(Exit::new(1, "demo is not written yet"))
}
