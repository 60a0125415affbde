//! `firetower dashboard`: a live view of the cluster over HTTP (work in progress).

use crate::cli::Failure;

/// Where the dashboard listens and what it watches.
#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    /// Metastore addresses, comma-separated.
    #[arg(long)]
    pub metastore: String,
    /// The HTTP address to serve the dashboard on.
    #[arg(long, default_value = "127.0.0.1:9990")]
    pub listen: String,
}

pub async fn run(_args: DashboardArgs) -> Result<(), Failure> {
    Err(Failure::Usage("the dashboard is not built yet".into()))
}
