//! A real headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`; scripts/test.sh installs them), for the ownership
//! page. chromedriver and every browser process it starts are one process
//! group, ended together.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use fantoccini::{Client, ClientBuilder};

use crate::*;

pub struct Browser {
    pub client: Client,
    driver: Daemon,
}

impl Browser {
    /// Starts chromedriver and one headless browser session.
    pub async fn start() -> Result<Self> {
        let port = free_port();
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}")).process_group(0);
        let driver = Daemon::spawn("chromedriver", cmd)?;
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    "--no-first-run", "--disable-extensions",
                ],
            }),
        );
        let client = until(
            Duration::from_millis(100),
            async || {
                // chromedriver speaks plain HTTP on loopback.
                let http = hyper_util::client::legacy::connect::HttpConnector::new();
                let session = ClientBuilder::new(http)
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await;
                Ok(session.map_err(|e| e.to_string()))
            },
            |session| session.is_ok(),
        )
        .await
        .with_context(|| format!("chromedriver never gave a session: {}", driver.log_text()))?
        .map_err(|e| anyhow!(e))?;
        Ok(Self { client, driver })
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn eval(&self, script: &str) -> Result<serde_json::Value> {
        Ok(self.client.execute(script, Vec::new()).await?)
    }

    /// Waits until `script`'s value passes `check`; that value.
    pub async fn until(
        &self,
        script: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        until(
            Duration::from_millis(20),
            async || self.eval(script).await,
            check,
        )
        .await
        .with_context(|| format!("the page never showed what {script:?} looks for"))
    }

    /// Ends the browser session, then chromedriver.
    pub async fn close(self) -> Result<()> {
        self.client.clone().close().await?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the browsers it started.
        if let Some(pid) = self.driver.pid() {
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}
