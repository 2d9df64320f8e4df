//! The `ferroformer` command.

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    // candle and rayon read the thread count from this variable when their pools start.
    let threads = cli.common.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    if let Err(e) = cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
