//! `codervpn`: the command-line front end of the CoderVPN toolkit.

#![forbid(unsafe_code)]

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use codervpn_codec::Role;

mod capture;

#[derive(Debug, Parser)]
#[command(
    name = "codervpn",
    version,
    about = "Toolkit for the CoderVPN manager/tunnel protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode one direction of a captured stream (header line, then frames)
    /// into the header line and one proto3 JSON object per frame.
    Decode {
        /// The role that sent the captured bytes.
        #[arg(long, value_parser = parse_role)]
        from: Role,
        /// Capture file; standard input when absent.
        file: Option<PathBuf>,
    },
    /// The inverse of `decode`: a header line, then one JSON message per
    /// line, written to standard output as wire bytes.
    Encode {
        /// The role whose messages the input holds.
        #[arg(long, value_parser = parse_role)]
        from: Role,
        /// Input file; standard input when absent.
        file: Option<PathBuf>,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse::<Role>().map_err(|err| err.to_string())
}

fn open_input(file: Option<&PathBuf>) -> anyhow::Result<Box<dyn Read>> {
    Ok(match file {
        Some(path) => Box::new(
            std::fs::File::open(path)
                .map_err(|err| anyhow::anyhow!("cannot open {}: {err}", path.display()))?,
        ),
        None => Box::new(std::io::stdin().lock()),
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    let result = match &cli.command {
        Command::Decode { from, file } => {
            capture::decode(*from, open_input(file.as_ref())?, &mut out)
                .map_err(anyhow::Error::from)
        }
        Command::Encode { from, file } => {
            capture::encode(*from, BufReader::new(open_input(file.as_ref())?), &mut out)
                .map_err(anyhow::Error::from)
        }
    };
    // Whatever was decoded before an error is still printed.
    out.flush()?;
    result
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
