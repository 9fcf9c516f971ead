use std::process::ExitCode;

use agentkeys_broker::cli::{Cli, Command};
use agentkeys_broker::config::setting_error_from_clap;
use clap::Parser;

// A mint allocates a few dozen small buffers across the async workers and the store's writer
// thread; glibc's malloc spent about a tenth of the broker's CPU on them (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(setting) = setting_error_from_clap(&e) {
                eprintln!("agentkeys-broker: {setting}");
                return ExitCode::from(2);
            }
            e.exit();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentkeys-broker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(settings) => match settings.resolve() {
            Ok(settings) => {
                agentkeys_broker::commands::init_tracing(settings.log_json);
                runtime.block_on(agentkeys_broker::run(settings))
            }
            Err(e) => {
                eprintln!("agentkeys-broker: {e}");
                return ExitCode::from(2);
            }
        },
        other => runtime.block_on(agentkeys_broker::commands::run(other)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `… | head` closed the pipe: the reader has what it wanted, nothing went wrong.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentkeys-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
