//! `render --service URL` and `still --service URL`: the same flags as a local render, sent to
//! a deployed service as the Node client would send them; the output is then downloaded.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::{PERCENT_BAR, RenderArgs, SiteArgs, StillArgs, progress_bar};
use crate::api::client::{self, ClientError, OutputTarget};
use crate::api::id_token;
use crate::api::wire::SuccessResponse;
use crate::options::{LogLevel, Privacy, SiteOptions};
use crate::storage::Storage;
use crate::storage::gcs::GcsStore;

/// Where and how to render when the work happens on a deployed service.
#[derive(Debug, Args, Clone, Default)]
pub struct ServiceArgs {
    /// Render on the service at this URL (its Cloud Run URL, or a local `serve`) instead of
    /// here. The serve URL must then be an http(s) URL or a site name from `sites create`.
    #[arg(long, value_name = "URL")]
    pub service: Option<String>,
    /// With --service: the bucket the service writes the output to (outputBucket).
    #[arg(long, requires = "service")]
    pub bucket: Option<String>,
    /// With --service: the object's name under renders/<renderId>/ (default out.<ext>).
    #[arg(long = "out-name", requires = "service")]
    pub out_name: Option<String>,
    /// With --service: public (default), private or no-acl.
    #[arg(long, requires = "service")]
    pub privacy: Option<Privacy>,
}

impl ServiceArgs {
    /// The name the codec or image format follows: the local output, else `--out-name`.
    pub fn output_name<'a>(&'a self, output: Option<&'a Path>) -> Option<&'a Path> {
        output.or(self.out_name.as_deref().map(Path::new))
    }

    fn target(&self) -> anyhow::Result<OutputTarget> {
        let bucket = self
            .bucket
            .clone()
            .filter(|b| !b.is_empty())
            .context("--service needs --bucket: the bucket the service writes the output to")?;
        Ok(OutputTarget {
            bucket,
            out_name: self.out_name.clone(),
            privacy: self.privacy,
            download_behavior: Default::default(),
        })
    }

    /// The service's URL, where the output goes, and the site as the service will open it.
    fn prepare(&self, site: &SiteArgs) -> anyhow::Result<(url::Url, OutputTarget, SiteOptions)> {
        let url = self.url()?;
        let target = self.target()?;
        let mut site = site.to_options()?;
        site.serve_url = serve_url(&site.serve_url, &target.bucket)?;
        Ok((url, target, site))
    }

    fn url(&self) -> anyhow::Result<url::Url> {
        let raw = self.service.as_deref().unwrap_or_default();
        let url =
            url::Url::parse(raw).with_context(|| format!("--service {raw:?} is not a URL"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "--service {raw:?} is not an http(s) URL"
        );
        Ok(url)
    }
}

/// What the service opens: an http(s) URL as given, or the serve URL of a site deployed with
/// `sites create` to the output bucket. A bundle directory cannot be opened by a service.
fn serve_url(given: &str, bucket: &str) -> anyhow::Result<String> {
    if crate::site::is_remote(given) {
        return Ok(given.to_string());
    }
    if Path::new(given).is_dir() {
        anyhow::bail!(
            "{given} is a local directory, which a service cannot open. Deploy it first with `cloudrun-render sites create {given} --bucket {bucket}` and pass the serve URL it prints."
        );
    }
    if crate::sites::validate_site_name(given).is_ok() {
        let store = GcsStore::from_env()?;
        return Ok(crate::sites::serve_url(&store, bucket, given));
    }
    anyhow::bail!("{given:?} is neither an http(s) serve URL nor a site name")
}

/// Calls the service with `payload`, showing progress (and, with `--log verbose`, every line
/// the service sends as it arrives). Ctrl-C drops the connection, which stops the render.
async fn call(
    service: &url::Url,
    payload: &impl serde::Serialize,
    log: LogLevel,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<SuccessResponse> {
    let verbose = matches!(log, LogLevel::Verbose | LogLevel::Trace);
    let token = if id_token::wanted_for(service) {
        let (token, notes) = id_token::fetch(&id_token::audience(service)).await;
        if verbose || token.is_none() {
            for note in notes {
                bar.suspend(|| eprintln!("ID token: {note}"));
            }
        }
        if token.is_none() {
            bar.suspend(|| {
                eprintln!("No credentials for an ID token: calling {service} without one")
            });
        }
        token
    } else {
        None
    };
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()?;
    let on_message = |m: client::Message<'_>| {
        if verbose {
            bar.suspend(|| eprintln!("service: {}", m.text));
        }
        if let Some(p) = m.progress {
            bar.set_position((p * 100.0).round() as u64);
        }
    };
    let result = tokio::select! {
        r = client::call(&http, service.as_str(), token.as_deref(), payload, on_message) => r,
        _ = crate::system::termination_requested() => {
            anyhow::bail!("interrupted: the connection is closed, which stops the render on the service")
        }
    };
    result.map_err(|e| match e {
        ClientError::Service(body) => {
            // A JavaScript stack starts with "Name: message"; ours may be empty.
            let head = format!("{}: {}", body.name, body.message);
            if body.stack.starts_with(&head) {
                anyhow::anyhow!("{}", body.stack)
            } else if body.stack.is_empty() {
                anyhow::anyhow!("{head}")
            } else {
                anyhow::anyhow!("{head}\n{}", body.stack)
            }
        }
        other => anyhow::anyhow!(other),
    })
}

/// Prints what the service answered and downloads the object to `output`, if given.
async fn finish(
    response: &SuccessResponse,
    output: Option<&Path>,
    started: Instant,
) -> anyhow::Result<()> {
    println!(
        "Rendered on the service in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "Public URL:        {}",
        response
            .public_url
            .as_deref()
            .unwrap_or("none (not public)")
    );
    println!("Cloud Storage URI: {}", response.cloud_storage_uri);
    println!("Size:              {} bytes", response.size);
    println!("Render ID:         {}", response.render_id);
    let Some(output) = output else {
        return Ok(());
    };
    let key = response
        .cloud_storage_uri
        .strip_prefix(&format!("gs://{}/", response.bucket_name))
        .with_context(|| {
            format!(
                "the service answered an object outside its bucket: {}",
                response.cloud_storage_uri
            )
        })?;
    let storage = Storage::from_env().await?;
    let bytes = storage
        .download(&response.bucket_name, key, output)
        .await
        .with_context(|| format!("downloading {}", response.cloud_storage_uri))?;
    println!("Downloaded:        {} ({bytes} bytes)", output.display());
    Ok(())
}

pub async fn render(args: RenderArgs) -> anyhow::Result<()> {
    let (service, target, site) = args.service.prepare(&args.site)?;
    let media = args.to_options()?;
    let payload = client::media_call(&site, &media, &target);
    let started = Instant::now();
    let bar = progress_bar(100, PERCENT_BAR);
    bar.set_message(format!("rendering {} on {service}", media.composition_id));
    let response = call(&service, &payload, site.log_level, &bar).await;
    match &response {
        Ok(_) => bar.finish_and_clear(),
        Err(_) => bar.abandon(),
    }
    finish(&response?, args.output.as_deref(), started).await
}

pub async fn still(args: StillArgs) -> anyhow::Result<()> {
    let (service, target, site) = args.service.prepare(&args.site)?;
    let still = args.to_options()?;
    let payload = client::still_call(&site, &still, &target);
    let started = Instant::now();
    // Stills stream no progress: a spinner says the request is alive.
    let bar = progress_bar(0, "{spinner} [{elapsed_precise}] {msg}");
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message(format!("rendering {} on {service}", still.composition_id));
    let response = call(&service, &payload, site.log_level, &bar).await;
    bar.finish_and_clear();
    finish(&response?, args.output.as_deref(), started).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<crate::cli::Cli, clap::Error> {
        use clap::Parser;
        crate::cli::Cli::try_parse_from(
            std::iter::once("cloudrun-render").chain(args.iter().copied()),
        )
    }

    #[test]
    fn the_output_is_optional_only_with_a_service() {
        use crate::cli::Command;
        let cli = parse(&[
            "render",
            "--service",
            "https://r.run.app",
            "https://x/site/",
            "Comp",
            "--bucket",
            "b",
            "--out-name",
            "a/clip.webm",
            "--privacy",
            "private",
            "--frames",
            "0-9",
        ])
        .unwrap();
        let Command::Render(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.output, None);
        let target = args.service.target().unwrap();
        assert_eq!(target.bucket, "b");
        assert_eq!(target.privacy, Some(Privacy::Private));
        // The codec follows the object's name when there is no local output.
        assert_eq!(args.to_options().unwrap().codec, crate::options::Codec::Vp8);

        let cli = parse(&[
            "still",
            "--service",
            "http://127.0.0.1:8080",
            "s",
            "C",
            "x.jpg",
        ])
        .unwrap();
        let Command::Still(args) = cli.command else {
            panic!()
        };
        assert!(
            args.service.target().is_err(),
            "--bucket is required with --service"
        );
        assert_eq!(
            args.to_options().unwrap().image_format,
            crate::options::StillImageFormat::Jpeg
        );

        assert!(
            parse(&["render", "s", "Comp"]).is_err(),
            "a local render needs an output"
        );
        assert!(parse(&["render", "s", "Comp", "o.mp4", "--bucket", "b"]).is_err());
        let cli = parse(&["render", "--service", "ftp://x", "s", "C", "--bucket", "b"]).unwrap();
        let Command::Render(args) = cli.command else {
            panic!()
        };
        assert!(args.service.url().is_err());
    }

    #[test]
    fn serve_urls_pass_and_site_names_expand() {
        assert_eq!(
            serve_url("https://storage.googleapis.com/b/sites/x/index.html", "b").unwrap(),
            "https://storage.googleapis.com/b/sites/x/index.html"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = serve_url(dir.path().to_str().unwrap(), "b").unwrap_err();
        assert!(e.to_string().contains("sites create"), "{e}");
        assert!(serve_url("not a name", "b").is_err());
    }
}
