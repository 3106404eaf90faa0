//! nomad-driver-elide: the Nomad task driver plugin binary. Nomad launches it; by hand it only
//! explains how to install it, or prints its version with `--version`.

fn main() {
    if matches!(
        std::env::args().nth(1).as_deref(),
        Some("--version" | "-V" | "version")
    ) {
        println!(
            "{}",
            common::shim_api::version_line("nomad-driver-elide", driver::VERSION, driver::REVISION)
        );
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("models") {
        std::process::exit(driver::models::cli::run(&args[1..]));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nomad-driver-elide: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(driver::serve::run()) {
        tracing::error!(error = %format!("{e:#}"), "plugin failed");
        eprintln!("nomad-driver-elide: {e:#}");
        std::process::exit(1);
    }
}
