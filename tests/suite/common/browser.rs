//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`),
//! for the support console's end-to-end tests. Missing browsers fail the test, loudly.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Self {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's chromium and chromium-driver (./scripts/test does)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // In a process group of its own, with the Chromium it starts, so that all of them
        // go when the test is done (killing chromedriver alone leaves Chromium running).
        let driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(format!("{base}/status")).send().await {
                let status = body_json(r).await;
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--mute-audio".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let created = client
            .post(format!("{base}/session"))
            .header("content-type", "application/json")
            .body(caps.to_string())
            .send()
            .await
            .expect("new WebDriver session");
        let created = body_json(created).await;
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("Chromium did not start: {created}"))
            .to_owned();
        let browser = Self {
            driver,
            base,
            session,
            client,
            _profile: profile,
        };
        // Elements are looked for until they appear (a page may still be loading).
        browser
            .command("POST", "/timeouts", json!({ "implicit": 10_000 }))
            .await;
        // A desk's screen, not headless Chromium's 800×600 (where the console's tables
        // scroll inside their box and a click may land beside a link).
        browser.window_size(1280, 800).await;
        browser
    }

    /// Wait until the page's address ends with `suffix` (a form's redirect may still be
    /// under way when a click returns); the address.
    pub async fn wait_for_url(&self, suffix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await;
            if url.ends_with(suffix) {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "stayed at {url}, expected …{suffix}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the element's text starts with `prefix`.
    pub async fn wait_for_text(&self, css: &str, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The element may belong to the page being replaced: look again.
            let text = self.try_text(css).await.unwrap_or_default();
            if text.starts_with(prefix) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} says {text:?}, expected {prefix:?}…"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_command(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    async fn try_command(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = self.client.request(method.parse().unwrap(), url);
        let request = if method == "GET" {
            request
        } else {
            request
                .header("content-type", "application/json")
                .body(body.to_string())
        };
        let reply = body_json(request.send().await.unwrap()).await;
        match reply["value"]["error"].as_str() {
            Some(error) => Err(format!("{error}: {}", reply["value"]["message"])),
            None => Ok(reply["value"].clone()),
        }
    }

    pub async fn go(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
    }

    pub async fn url(&self) -> String {
        self.command("GET", "/url", Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn find(&self, css: &str) -> String {
        let found = self
            .command(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().unwrap().to_owned()
    }

    pub async fn count(&self, css: &str) -> usize {
        let found = self
            .command(
                "POST",
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found.as_array().map_or(0, Vec::len)
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command("POST", &format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn try_text(&self, css: &str) -> Result<String, String> {
        let found = self
            .try_command(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        let element = found[ELEMENT].as_str().unwrap_or_default();
        let text = self
            .try_command("GET", &format!("/element/{element}/text"), Value::Null)
            .await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    pub async fn source(&self) -> String {
        let source = self.command("GET", "/source", Value::Null).await;
        source.as_str().unwrap_or_default().to_owned()
    }

    /// Run `script` (which calls its last argument with the result) in the page.
    pub async fn run_async(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/async",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Size the window (the page's viewport in headless Chromium).
    pub async fn window_size(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            json!({ "width": width, "height": height }),
        )
        .await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let png = self.command("GET", "/screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 screenshot")
    }

    /// Look for `css` for at most `wait` (the usual wait is for elements that must appear).
    pub async fn count_within(&self, css: &str, wait: Duration) -> usize {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.command("POST", "/timeouts", json!({ "implicit": ms }))
            .await;
        let n = self.count(css).await;
        self.command("POST", "/timeouts", json!({ "implicit": 10_000 }))
            .await;
        n
    }

    pub async fn cookie(&self, name: &str) -> Option<String> {
        let cookies = self.command("GET", "/cookie", Value::Null).await;
        cookies.as_array()?.iter().find_map(|c| {
            (c["name"] == name).then(|| c["value"].as_str().unwrap_or_default().to_owned())
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

async fn body_json(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}
