//! `cargo xtask certs`: a development CA and one certificate per node, laid
//! out as Kubernetes TLS Secrets (`<out>/node-<id>/{ca.crt,tls.crt,tls.key}`),
//! for running the counter-service on mutual TLS locally.

use std::path::PathBuf;
use std::process::ExitCode;

use cluster::NodeId;
use cluster::transport::dev_certs::DevCa;

/// Options of `cargo xtask certs`.
#[derive(clap::Args)]
pub struct Args {
    /// The cluster name the certificates are for (the counter-service's
    /// --cluster-name).
    #[arg(long, default_value = "counters")]
    cluster: String,
    /// Node ids 1..=N get a certificate each.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Where to write them.
    #[arg(long, default_value = "target/certs")]
    out: PathBuf,
}

pub fn run(args: Args) -> ExitCode {
    let result = DevCa::new(&args.cluster).and_then(|ca| {
        (1..=args.nodes)
            .map(|id| ca.write_node(NodeId(id), &args.out.join(format!("node-{id}"))))
            .collect::<Result<Vec<_>, _>>()
    });
    match result {
        Ok(written) => {
            for settings in written {
                println!(
                    "--tls-ca {} --tls-cert {} --tls-key {}",
                    settings.ca.display(),
                    settings.cert.display(),
                    settings.key.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("certs: {error}");
            ExitCode::FAILURE
        }
    }
}
