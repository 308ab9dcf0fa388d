//! `kafka-handler dlt replay`: dead letters back to the group that failed
//! them, and to no other.

use std::time::Duration;

use super::letters::{DeadLetter, Filter, line, matching};
use super::{Console, Error as CliError};
use crate::middleware::dead_letter::{headers as dlt, redrive_topic};
use crate::middleware::retry_topic::headers as retry;
use crate::{Outgoing, Producer};

/// Sends the matching dead letters back, each to its group's re-drive topic.
/// One that cannot be is skipped with the reason on stderr, the others are
/// replayed, and then the command fails.
pub(super) async fn replay(
    bootstrap: &str,
    filter: &Filter,
    dry_run: bool,
    rate: f64,
    console: &mut Console<'_>,
) -> Result<(), CliError> {
    let found = matching(bootstrap, filter)?;
    let producer = if dry_run { None } else { Some(Producer::builder().bootstrap_servers(bootstrap).build()?) };
    let progress = (console.std_streams && !dry_run).then(|| indicatif::ProgressBar::new(found.len() as u64));
    let mut pace = (rate > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / rate)));
    let (mut replayed, mut skipped) = (0, 0);
    for l in &found {
        let (topic, group) = match target(l) {
            Ok(target) => target,
            Err(reason) => {
                skipped += 1;
                let skip = format!("skipping dead letter {}[{}]@{}: {reason}", filter.topic, l.partition, l.offset);
                match &progress {
                    // Above the bar, which stays.
                    Some(bar) => bar.suspend(|| console.err(&skip)),
                    None => console.err(&skip),
                }
                continue;
            }
        };
        let Some(producer) = &producer else {
            console.out(format_args!("would replay {}", line(l)));
            continue;
        };
        if let Some(pace) = pace.as_mut() {
            pace.tick().await;
        }
        producer.send(redrive(l, topic, group)).await?;
        replayed += 1;
        if let Some(bar) = &progress {
            bar.inc(1);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let matched = found.len();
    if dry_run {
        console.err(format_args!("{} of {matched} dead letters would be replayed", matched - skipped));
    } else {
        console.err(format_args!("replayed {replayed} of {matched} dead letters"));
    }
    if skipped > 0 {
        return Err(CliError::NotReplayed { skipped, matched });
    }
    Ok(())
}

/// The original topic and the group to send the dead letter back to, or why
/// it cannot be, and what to do instead.
fn target(l: &DeadLetter) -> Result<(&str, &str), String> {
    let (Some(topic), Some(group)) = (l.header(dlt::ORIGINAL_TOPIC), l.header(dlt::GROUP)) else {
        return Err(format!(
            "it has no provenance headers ({}, {}): the dead-letter layer did not write it, so there is no group \
             to send it back to; re-produce it by hand",
            dlt::ORIGINAL_TOPIC,
            dlt::GROUP
        ));
    };
    if let Some(size) = l.header(dlt::PAYLOAD_DROPPED) {
        let at = |name| l.header(name).unwrap_or("?");
        return Err(format!(
            "its payload ({size} bytes) was too large for the dead-letter topic and was left out; the payload is \
             at {topic}[{}]@{}: re-produce it from there",
            at(dlt::ORIGINAL_PARTITION),
            at(dlt::ORIGINAL_OFFSET),
        ));
    }
    Ok((topic, group))
}

/// The dead letter as the failing group will read it again: original key,
/// value and headers, and where it first was, so a new failure keeps that
/// provenance.
fn redrive(l: &DeadLetter, topic: &str, group: &str) -> Outgoing {
    let mut out = Outgoing::from_parts(redrive_topic(topic, group), l.key.clone(), l.payload.clone());
    for (name, value) in l.headers.iter().filter(|(n, _)| !n.starts_with("dlt.") && !n.starts_with("retry.")) {
        out = out.raw_header(name.clone(), value.clone());
    }
    let h = |name| l.header(name).unwrap_or_default().to_owned();
    out = out
        .header(retry::ORIGINAL_TOPIC, topic.to_owned())
        .header(retry::ORIGINAL_PARTITION, h(dlt::ORIGINAL_PARTITION))
        .header(retry::ORIGINAL_OFFSET, h(dlt::ORIGINAL_OFFSET));
    if let Some(ts) = l.header(dlt::ORIGINAL_TIMESTAMP) {
        out = out.header(retry::ORIGINAL_TIMESTAMP, ts.to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn letter(headers: &[(&str, &str)]) -> DeadLetter {
        DeadLetter {
            partition: 1,
            offset: 9,
            timestamp: None,
            key: None,
            payload: None,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), Some(Bytes::copy_from_slice(v.as_bytes()))))
                .collect(),
        }
    }

    #[test]
    fn says_why_a_dead_letter_cannot_be_replayed_and_what_to_do() {
        let provenance = [(dlt::ORIGINAL_TOPIC, "orders"), (dlt::GROUP, "payment")];
        assert_eq!(target(&letter(&provenance)), Ok(("orders", "payment")));
        let dropped = letter(&[
            (dlt::ORIGINAL_TOPIC, "orders"),
            (dlt::ORIGINAL_PARTITION, "2"),
            (dlt::ORIGINAL_OFFSET, "41"),
            (dlt::GROUP, "payment"),
            (dlt::PAYLOAD_DROPPED, "2000000"),
        ]);
        let reason = target(&dropped).unwrap_err();
        assert!(reason.contains("2000000 bytes"), "{reason}");
        assert!(reason.contains("orders[2]@41: re-produce it from there"), "{reason}");
        let foreign = target(&letter(&[])).unwrap_err();
        assert!(foreign.contains("no provenance headers"), "{foreign}");
    }
}
