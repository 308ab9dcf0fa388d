//! The `kafka-handler` command line tool. Not a stable API: run the binary.

mod dlt;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "kafka-handler", version, about = "Operate kafka-handler consumers")]
struct Cli {
    /// Brokers, `host:port[,…]`.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", global = true, default_value = "localhost:9092")]
    bootstrap_servers: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Dead-letter topics: inspect and re-drive.
    #[command(subcommand)]
    Dlt(dlt::DltCommand),
}

/// Runs the tool with `args` (the first is the program name).
pub async fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        Command::Dlt(command) => dlt::run(&cli.bootstrap_servers, command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kafka-handler: {e}");
            ExitCode::FAILURE
        }
    }
}
