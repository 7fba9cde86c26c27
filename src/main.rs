//! `seqgan`: parse the command line and dispatch to its handler (`seqgan::commands`).

use clap::Parser;

fn main() {
    seqgan::host_alloc::tune();
    let cli = seqgan::cli::Cli::parse();
    if let Err(e) = seqgan::commands::run(&cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
