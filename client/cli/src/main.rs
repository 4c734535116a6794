//! `poolctl`: the command line for a poolplane server.

use anyhow::Context;
use clap::{Parser, Subcommand};
use poolplane_client::PoolplaneClient;

/// Command line for poolplane's gRPC control plane.
#[derive(Debug, Parser)]
#[command(name = "poolctl", version, about)]
struct Flags {
    /// The server's gRPC address.
    #[arg(
        long,
        env = "POOLPLANE_SERVER",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    server: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the server's pools.
    List,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let client = PoolplaneClient::connect(&flags.server)
        .await
        .with_context(|| format!("connecting to {}", flags.server))?;
    match flags.command {
        Command::List => {
            let pools = client.list_pools().await?;
            println!("{:<24} DATABASE", "NAME");
            for pool in pools {
                println!("{:<24} {}", pool.name, pool.database_url);
            }
        }
    }
    Ok(())
}
