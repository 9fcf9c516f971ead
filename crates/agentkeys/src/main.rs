use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = agentkeys::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentkeys: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Not locked for the whole run: `agentkeys mcp` writes stdout from the async runtime's
    // threads, which would wait forever on a lock held here.
    let mut stdout = std::io::stdout();
    match runtime.block_on(agentkeys::run(cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever a broker message contained.
            let line: String = e
                .to_string()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            eprintln!("agentkeys: error: {line}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
