//! A headless Chromium driven over WebDriver (chromedriver on a free port), with the
//! checks every console page must pass: no console errors, no horizontal overflow at
//! 1280×800 and 390×844, no serious accessibility violations (axe-core), a screenshot.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use fantoccini::{
    Client, ClientBuilder, Locator, elements::Element, wd::WebDriverCompatibleCommand,
};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// How to get a browser when there is none.
const INSTALL: &str = "the console tests need Debian's chromium and chromium-driver: run scripts/services (it installs them when missing) or `apt-get install -y chromium chromium-driver`";

/// axe-core (MPL-2.0), vendored as a test asset: `tests/console/assets/`.
const AXE: &str = include_str!("assets/axe.min.js");

/// Chromium and its driver, for one test.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
    base: String,
}

/// Asks chromedriver for the browser's console log (the legacy logging endpoint, which
/// chromedriver still serves; WebDriver BiDi would be the standard way).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// Whether a log line is only a console page's own 4xx status (`<url> - Failed to load
/// resource: the server responded with a status of 404 (Not Found)`).
fn is_page_status(message: &str) -> bool {
    let Some((url, rest)) = message.split_once(' ') else {
        return false;
    };
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    let path = url.path();
    rest.contains("the server responded with a status of 4")
        && path.starts_with("/console")
        && !path.starts_with("/console/static/")
        && path != "/console/overview/live"
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile; fails (never
    /// skips) with an install hint when either is missing.
    pub async fn start(base: &str) -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}); {INSTALL}"));
        let profile = std::env::temp_dir().join(format!(
            "anika-console-chromium-{}-{port}",
            std::process::id()
        ));
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.display()),
                ]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        });
        let caps: serde_json::Map<String, Value> =
            serde_json::from_value(caps).expect("capabilities");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    panic!("cannot start headless Chromium through chromedriver: {e}; {INSTALL}")
                }
            }
        };
        client
            .set_window_size(1280, 800)
            .await
            .expect("window size");
        Self {
            client,
            driver,
            profile,
            base: base.to_owned(),
        }
    }

    /// Opens a console path (`/console/...`).
    pub async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// The input a `<label>` with exactly this text names (proves the label is there).
    pub async fn field(&self, label: &str) -> Element {
        let found = self
            .client
            .find(Locator::XPath(&format!(
                "//label[normalize-space()=\"{label}\"]"
            )))
            .await;
        let label_el = match found {
            Ok(el) => el,
            Err(e) => panic!("no label \"{label}\" on {}: {e}", self.url().await),
        };
        let id = label_el
            .attr("for")
            .await
            .expect("for")
            .expect("the label names its field");
        self.client
            .find(Locator::Id(&id))
            .await
            .unwrap_or_else(|e| panic!("label \"{label}\" names #{id}, which is missing: {e}"))
    }

    /// Types into the field labelled `label` (after clearing it).
    pub async fn fill(&self, label: &str, text: &str) {
        let field = self.field(label).await;
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    /// Chooses an option by value in the select labelled `label`.
    pub async fn choose(&self, label: &str, value: &str) {
        self.field(label)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("no option {value} under \"{label}\": {e}"));
    }

    /// Presses the button with exactly this text.
    pub async fn press(&self, text: &str) {
        let found = self
            .client
            .find(Locator::XPath(&format!(
                "//button[normalize-space()=\"{text}\"]"
            )))
            .await;
        let button = match found {
            Ok(el) => el,
            Err(e) => panic!("no button \"{text}\" on {}: {e}", self.url().await),
        };
        button
            .click()
            .await
            .unwrap_or_else(|e| panic!("press {text}: {e}"));
    }

    /// Follows the link with exactly this text.
    pub async fn follow(&self, text: &str) {
        let found = self.client.find(Locator::LinkText(text)).await;
        match found {
            Ok(link) => link.click().await.expect("click"),
            Err(e) => panic!("no link \"{text}\" on {}: {e}", self.url().await),
        }
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.client
            .execute(
                "return document.body ? document.body.innerText : ''",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The current URL.
    pub async fn url(&self) -> url::Url {
        self.client.current_url().await.expect("current url")
    }

    /// Waits until the page shows `needle`.
    pub async fn wait_text(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = self.text().await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "\"{needle}\" did not appear on {}; the page says:\n{text}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reloads `path` until the page shows `needle` (for what the server learns later).
    pub async fn reload_until(&self, path: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            self.open(path).await;
            let text = self.text().await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "\"{needle}\" never appeared on {path}; the page says:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Signs in with an API key through the form.
    pub async fn sign_in(&self, key: &str) {
        self.open("/console/sign-in").await;
        self.fill("API key", key).await;
        self.press("Sign in").await;
        self.wait_text("Sign out").await;
    }

    /// Signs out with the button every page has.
    pub async fn sign_out(&self) {
        self.press("Sign out").await;
        // The sign-in page itself, not a text: a signed-in page's navigation links "API
        // keys", so waiting for "API key" returned before the sign-out was answered, and
        // the session it ends was sometimes still alive (seen on CI).
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.url().await.path() != "/console/sign-in" {
            assert!(
                Instant::now() < deadline,
                "signing out did not lead to the sign-in page; at {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_text("Any operator, admin or publisher key").await;
    }

    /// The session cookie's value (HttpOnly: WebDriver sees it, page scripts do not).
    pub async fn session_cookie(&self) -> String {
        self.client
            .get_named_cookie("anika_console")
            .await
            .expect("the session cookie")
            .value()
            .to_owned()
    }

    /// Console messages at SEVERE since the last call (CSP violations land here too).
    ///
    /// Chromium also logs the HTTP status of a page that answers 4xx on purpose (the 404
    /// page, a refused form); those are the page's status, not an error in it, and are
    /// left out. A failed asset, fragment or script is still an error.
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("the browser log");
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .filter(|message| !is_page_status(message))
            .collect()
    }

    async fn overflow(&self) -> (u64, u64) {
        let v = self
            .client
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth]",
                vec![],
            )
            .await
            .expect("measure");
        (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0))
    }

    /// Serious or critical axe-core violations on the current page.
    async fn accessibility(&self) -> Vec<String> {
        self.client
            .execute(AXE, vec![])
            .await
            .expect("inject axe-core");
        let result = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {resultTypes: ['violations']})
                    .then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                        .map(v => v.id + ': ' + v.help + ' (' + v.nodes.map(n => n.target.join(' ')).join(', ') + ')')))
                    .catch(e => done(['axe failed: ' + e]));",
                vec![],
            )
            .await
            .expect("run axe-core");
        result
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The checks of a main page: no console errors, fits 1280×800 and 390×844 without
    /// horizontal scrolling, no serious accessibility violations; saves `<name>.png` in `docs/console/` when
    /// `ANIKA_CONSOLE_SCREENSHOTS=1`, else in `target/console-screenshots/`.
    pub async fn check_page(&self, name: &str) {
        let url = self.url().await;
        let errors = self.console_errors().await;
        assert!(
            errors.is_empty(),
            "{name} ({url}) logged console errors: {errors:#?}"
        );
        for (w, h) in [(390, 844), (1280, 800)] {
            self.client
                .set_window_size(w, h)
                .await
                .expect("window size");
            tokio::time::sleep(Duration::from_millis(150)).await;
            let (scroll, inner) = self.overflow().await;
            if scroll > inner {
                // Name the widest culprits, so the fix needs no second run.
                let wide = self
                    .client
                    .execute(
                        "return [...document.querySelectorAll('body *')]
                            .filter(e => e.getBoundingClientRect().right > window.innerWidth)
                            .slice(0, 8)
                            .map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))",
                        vec![],
                    )
                    .await
                    .unwrap_or_default();
                panic!(
                    "{name} ({url}) overflows horizontally at {w}×{h}: scrollWidth {scroll} > innerWidth {inner}; past the edge: {wide}"
                );
            }
        }
        let violations = self.accessibility().await;
        assert!(
            violations.is_empty(),
            "{name} ({url}) has serious accessibility violations: {violations:#?}"
        );
        let png = self.client.screenshot().await.expect("screenshot");
        // The committed screenshots change only when asked for, so a test run leaves
        // the work tree clean; otherwise they go to target/ for a look.
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = if std::env::var_os("ANIKA_CONSOLE_SCREENSHOTS").is_some_and(|v| v == "1") {
            root.join("docs/console")
        } else {
            root.join("target/console-screenshots")
        };
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
    }

    /// Closes the browser and its driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
