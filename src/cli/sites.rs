//! `sites create | ls | rm`: bundles in a bucket, as serve URLs for the service.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::progress_bar;
use crate::options::Privacy;
use crate::sites::{self, Bundle};
use crate::storage::gcs::GcsStore;

#[derive(Debug, Args)]
pub struct SitesArgs {
    #[command(subcommand)]
    pub command: SitesCommand,
}

#[derive(Debug, Subcommand)]
pub enum SitesCommand {
    /// Upload a bundle directory to gs://BUCKET/sites/NAME/ and print its serve URL. A
    /// re-deploy uploads only what changed and deletes what the bundle no longer has.
    Create(CreateArgs),
    /// List the sites in a bucket.
    Ls(BucketArgs),
    /// Delete a site.
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct BucketArgs {
    /// The bucket (Google Cloud Storage, or the emulator named by STORAGE_EMULATOR_HOST).
    #[arg(long)]
    pub bucket: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The directory holding index.html, as `remotion bundle` writes it.
    pub bundle: PathBuf,
    #[command(flatten)]
    pub bucket: BucketArgs,
    /// The site's name in its URL. Default: a short hash of the bundle's contents, so the
    /// same bundle always gets the same URL.
    #[arg(long = "site-name")]
    pub site_name: Option<String>,
    /// public (default: anyone may read, as the renderer's browser must), or no-acl for
    /// buckets with uniform bucket-level access that are made readable through IAM.
    #[arg(long, default_value = "public")]
    pub privacy: Privacy,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    pub name: String,
    #[command(flatten)]
    pub bucket: BucketArgs,
}

pub async fn run(args: SitesArgs) -> anyhow::Result<()> {
    let store = GcsStore::from_env()?;
    match args.command {
        SitesCommand::Create(a) => create(&store, a).await,
        SitesCommand::Ls(a) => ls(&store, &a).await,
        SitesCommand::Rm(a) => {
            let files = sites::remove(&store, &a.bucket.bucket, &a.name).await?;
            eprintln!(
                "Deleted site {} ({files} files) from {}",
                a.name, a.bucket.bucket
            );
            Ok(())
        }
    }
}

async fn create(store: &GcsStore, args: CreateArgs) -> anyhow::Result<()> {
    let bundle = Bundle::read(&args.bundle).await?;
    let name = args.site_name.unwrap_or_else(|| bundle.content_name());
    let bar = progress_bar(
        0,
        "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {msg}",
    );
    let progress = |p: sites::DeployProgress| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(format!("{}/{} files", p.files_done, p.files_total));
    };
    let deployed = sites::deploy(
        store,
        &bundle,
        &args.bucket.bucket,
        &name,
        args.privacy,
        &progress,
    )
    .await;
    match &deployed {
        Ok(_) => bar.finish_and_clear(),
        Err(_) => bar.abandon(),
    }
    let deployed = deployed?;
    eprintln!(
        "Site {} in {}: {} uploaded, {} unchanged, {} deleted",
        deployed.name, args.bucket.bucket, deployed.uploaded, deployed.unchanged, deployed.deleted
    );
    // Alone on stdout, so `SERVE_URL=$(cloudrun-render sites create …)` works.
    println!("{}", deployed.serve_url);
    Ok(())
}

async fn ls(store: &GcsStore, bucket: &BucketArgs) -> anyhow::Result<()> {
    let list = sites::list(store, &bucket.bucket).await?;
    if list.is_empty() {
        eprintln!("No sites in {}", bucket.bucket);
        return Ok(());
    }
    println!(
        "{:<24} {:>6} {:>12} {:<20} serve URL",
        "name", "files", "size", "last modified"
    );
    for s in list {
        let modified = s
            .last_modified
            .and_then(|t| {
                t.to_offset(time::UtcOffset::UTC)
                    .format(time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]:[second]Z"
                    ))
                    .ok()
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:>6} {:>12} {:<20} {}",
            s.name, s.files, s.size, modified, s.serve_url
        );
    }
    Ok(())
}
