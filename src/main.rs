use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cloudrun_render::logging::init();
    let cli = cloudrun_render::cli::Cli::parse();
    match cloudrun_render::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
