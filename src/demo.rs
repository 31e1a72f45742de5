//! `tether demo`: the cloud emulator, an SDK-like app and Tether wired together on free
//! loopback ports, with a readable timeline of what happens.

/// Options of `tether demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

/// Runs the demo.
pub async fn run(_args: DemoArgs) -> anyhow::Result<()> {
    Ok(())
}
