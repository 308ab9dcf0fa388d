//! `kafka-handler`: operate kafka-handler consumers from the command line.
//!
//! ```text
//! kafka-handler dlt list   --topic order.created.dlt [--kind decode] [--group inventory] [--since 2h]
//! kafka-handler dlt show   --topic order.created.dlt --partition 0 --offset 42
//! kafka-handler dlt replay --topic order.created.dlt --group inventory [--dry-run] [--rate 50]
//! ```

#[tokio::main]
async fn main() -> std::process::ExitCode {
    kafka_handler::cli::main(std::env::args_os()).await
}
