//! `kafka-handler dlt list | show | replay`.

use clap::Subcommand;

use super::letters::{Filter, escaped, line, matching, read};
use super::{Console, Error as CliError};
use crate::Error;

#[derive(Subcommand, Debug)]
pub(super) enum DltCommand {
    /// Lists dead letters, one line each.
    List {
        #[command(flatten)]
        filter: Filter,
    },
    /// Shows one dead letter: provenance, headers and payload.
    Show {
        /// The dead-letter topic.
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        #[arg(long)]
        offset: i64,
    },
    /// Sends dead letters back to the group that failed them, and to no other.
    /// The payload is unchanged, so the event id is kept and deduplication
    /// makes a second replay harmless.
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Only print what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// At most this many records per second (0: no limit).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
    },
}

pub(super) async fn run(bootstrap: &str, command: DltCommand, console: &mut Console<'_>) -> Result<(), CliError> {
    match command {
        DltCommand::List { filter } => {
            let found = matching(bootstrap, &filter)?;
            for l in &found {
                console.out(line(l));
            }
            console.err(format_args!("{} dead letters", found.len()));
        }
        DltCommand::Show { topic, partition, offset } => {
            let mut found = None;
            read(bootstrap, &topic, |l| {
                if (l.partition, l.offset) == (partition, offset) {
                    found = Some(l);
                    return false;
                }
                true
            })?;
            let l = found.ok_or_else(|| Error::Config(format!("no dead letter at {topic}[{partition}]@{offset}")))?;
            console.out(line(&l));
            for (name, value) in &l.headers {
                console.out(format_args!(
                    "  {}: {}",
                    escaped(name.as_bytes()),
                    value.as_deref().map_or("(null)".into(), escaped)
                ));
            }
            match l.payload.as_deref() {
                Some(p) => console.out(escaped(p)),
                None => console.out("(no payload)"),
            }
        }
        DltCommand::Replay { filter, dry_run, rate } => {
            super::replay::replay(bootstrap, &filter, dry_run, rate, console).await?;
        }
    }
    Ok(())
}
