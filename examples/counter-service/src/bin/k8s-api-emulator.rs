//! The loopback Kubernetes API server emulator as its own process, for tests
//! and local runs: prints its URL and writes a kubeconfig that points to it.
//!
//! `k8s-api-emulator <kubeconfig-path>`

use std::process::ExitCode;

use lease_k8s::emulator::ApiServer;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: k8s-api-emulator <kubeconfig-path>");
        return ExitCode::from(2);
    };
    let server = ApiServer::new();
    let endpoint = match server.endpoint("shared") {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(&path, endpoint.kubeconfig("default")) {
        eprintln!("cannot write {path}: {e}");
        return ExitCode::FAILURE;
    }
    println!("{}", endpoint.url);
    std::future::pending::<()>().await;
    ExitCode::SUCCESS
}
