//! The `kafka-handler` command line tool. Not a stable API: run the binary.

mod dlt;
mod letters;
mod replay;

use std::ffi::OsString;
use std::io::Write;
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

/// Runs the tool with `args` (the first is the program name), printing to
/// stdout and stderr, with a progress bar on a terminal.
pub async fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    run(args, Console { out: &mut out, err: &mut err, std_streams: true }).await
}

/// Runs the tool like [`main`], printing to `out` and `err` instead, without
/// a progress bar: for tests.
pub async fn main_with<I, T>(args: I, out: &mut (dyn Write + Send), err: &mut (dyn Write + Send)) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run(args, Console { out, err, std_streams: false }).await
}

async fn run<I, T>(args: I, mut console: Console<'_>) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            if console.std_streams {
                let _ = e.print();
            } else if e.use_stderr() {
                console.err(e.render().to_string().trim_end());
            } else {
                console.out(e.render().to_string().trim_end());
            }
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        Command::Dlt(command) => dlt::run(&cli.bootstrap_servers, command, &mut console).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            console.err(format_args!("kafka-handler: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum Error {
    /// Kafka or the configuration.
    #[error(transparent)]
    Kafka(#[from] crate::Error),
    /// Some matching dead letters could not be replayed; the others were.
    #[error("{skipped} of {matched} dead letters could not be replayed; the reasons are above")]
    NotReplayed { skipped: usize, matched: usize },
}

/// Where a command prints: its results to `out`, progress and problems to
/// `err`.
struct Console<'a> {
    out: &'a mut (dyn Write + Send),
    err: &'a mut (dyn Write + Send),
    /// Whether they are the process's stdout and stderr: then a progress bar
    /// and colours are drawn where stderr is a terminal.
    std_streams: bool,
}

impl Console<'_> {
    fn out(&mut self, line: impl std::fmt::Display) {
        // As `println!`, minus the panic when stdout is closed.
        let _ = writeln!(self.out, "{line}");
    }

    fn err(&mut self, line: impl std::fmt::Display) {
        let _ = writeln!(self.err, "{line}");
    }
}
