//! `pgraftd snapshot save|status|restore`: the backup commands of etcdctl 3.4 and etcdutl,
//! with their flags and output formats, for pgraft's backup files ([`super::backup`]).

use super::backup::{self, Summary};
use super::restore::{self, RestoreArgs};
use crate::error::{Error, Result};
use clap::{Parser, Subcommand, ValueEnum};
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::SnapshotRequest;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "pgraftd snapshot",
    about = "Back up and restore a pgraft cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Stores a snapshot of a member's state to FILE (as `etcdctl snapshot save`).
    Save(SaveArgs),
    /// Checks a snapshot file and prints its hash, revision, total keys and size.
    Status(StatusArgs),
    /// Creates the data directory of a member of a new cluster from a snapshot file.
    Restore(RestoreArgs),
}

#[derive(clap::Args, Debug)]
struct SaveArgs {
    file: PathBuf,
    /// The member to take the snapshot from (the first one listed).
    #[arg(long, default_value = "127.0.0.1:2379")]
    endpoints: String,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    file: PathBuf,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
    write_out: Format,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    Simple,
    Json,
    Table,
}

/// Runs `pgraftd snapshot ARGS...` (`args` without the program name and `snapshot`).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let argv = std::iter::once(OsString::from("pgraftd snapshot")).chain(args);
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let done = match cli.command {
        Command::Save(a) => save_command(&a),
        Command::Status(a) => backup::read(&a.file, true, |_, _, _| Ok(())).map(|s| {
            print!("{}", format_status(&s, a.write_out));
        }),
        Command::Restore(a) => restore::restore(&a).map(|r| {
            println!(
                "restored snapshot at revision {} into {} (member {:x}, cluster {:x})",
                r.revision,
                r.data_dir.display(),
                r.member_id,
                r.cluster_id
            );
        }),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn save_command(a: &SaveArgs) -> Result<()> {
    let endpoint = a
        .endpoints
        .split(',')
        .map(str::trim)
        .find(|e| !e.is_empty())
        .ok_or_else(|| Error::Internal("no endpoint given".into()))?;
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::internal)?;
    let s = rt.block_on(save(&url, &a.file))?;
    println!(
        "Snapshot saved at {} (revision {}, {})",
        a.file.display(),
        s.revision,
        human_bytes(s.total_size)
    );
    Ok(())
}

/// Takes a snapshot from the member at `url` into `file`, as etcdctl does: into `FILE.part`,
/// synced, then renamed; and checks the file (its trailing SHA-256 included) before the
/// rename, which etcdctl does not.
pub async fn save(url: &str, file: &Path) -> Result<Summary> {
    use tokio::io::AsyncWriteExt;
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::Internal(format!("bad endpoint {url}: {e}")))?
        .connect()
        .await
        .map_err(|e| Error::Internal(format!("connect to {url}: {e}")))?;
    let mut client = MaintenanceClient::new(ch).max_decoding_message_size(16 << 20);
    let mut stream = client
        .snapshot(SnapshotRequest {})
        .await
        .map_err(|s| Error::Internal(s.message().to_string()))?
        .into_inner();
    let mut part = file.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut out = tokio::fs::File::create(&part)
        .await
        .map_err(Error::internal)?;
    let written: Result<()> = async {
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| Error::Internal(s.message().to_string()))?
        {
            out.write_all(&msg.blob).await.map_err(Error::internal)?;
        }
        out.flush().await.map_err(Error::internal)?;
        out.sync_all().await.map_err(Error::internal)?;
        Ok(())
    }
    .await;
    let checked = written.and_then(|()| backup::read(&part, true, |_, _, _| Ok(())));
    match checked {
        Ok(summary) => {
            std::fs::rename(&part, file).map_err(Error::internal)?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

/// etcdutl's `snapshot status` output.
fn format_status(s: &Summary, format: Format) -> String {
    let hash = format!("{:x}", s.hash);
    let size = human_bytes(s.total_size);
    match format {
        Format::Simple => format!("{hash}, {}, {}, {size}\n", s.revision, s.total_key),
        Format::Json => format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            s.hash, s.revision, s.total_key, s.total_size
        ),
        Format::Table => table(
            &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
            &[hash, s.revision.to_string(), s.total_key.to_string(), size],
        ),
    }
}

/// A one-row table as etcdctl prints it (centred headers, right-aligned cells).
fn table(header: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = header
        .iter()
        .zip(row)
        .map(|(h, c)| h.len().max(c.len()))
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let mut out = rule.clone();
    for (h, w) in header.iter().zip(&widths) {
        let pad = w - h.len();
        let left = pad / 2;
        out += &format!("| {}{h}{} ", " ".repeat(left), " ".repeat(pad - left));
    }
    out += "|\n";
    out += &rule;
    for (c, w) in row.iter().zip(&widths) {
        out += &format!("| {c:>w$} ");
    }
    out += "|\n";
    out += &rule;
    out
}

/// go-humanize's `Bytes` (SI units), as etcdutl prints sizes.
pub fn human_bytes(s: u64) -> String {
    if s < 10 {
        return format!("{s} B");
    }
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((s as f64).ln() / 1000f64.ln()).floor();
    let suffix = SIZES[(e as usize).min(SIZES.len() - 1)];
    let val = ((s as f64) / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {suffix}")
    } else {
        format!("{val:.0} {suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_go_humanize_prints_them() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(82_854_982), "83 MB");
        assert_eq!(human_bytes(2_138_112), "2.1 MB");
        assert_eq!(human_bytes(1000), "1.0 kB");
    }

    #[test]
    fn status_formats() {
        let s = Summary {
            header: Default::default(),
            hash: 0xfe01_cf57,
            revision: 10,
            total_key: 7,
            total_size: 2_138_112,
            hash_checked: true,
        };
        assert_eq!(
            format_status(&s, Format::Simple),
            "fe01cf57, 10, 7, 2.1 MB\n"
        );
        assert_eq!(
            format_status(&s, Format::Json),
            "{\"hash\":4261531479,\"revision\":10,\"totalKey\":7,\"totalSize\":2138112}\n"
        );
        assert_eq!(
            format_status(&s, Format::Table),
            "+----------+----------+------------+------------+\n\
             |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +----------+----------+------------+------------+\n\
             | fe01cf57 |       10 |          7 |     2.1 MB |\n\
             +----------+----------+------------+------------+\n"
        );
    }
}
