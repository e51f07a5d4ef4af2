//! A headless Chromium for one test, driven through WebDriver: Debian's `chromedriver`
//! started on a free port in a process group of its own, each page a browser of its own
//! with a fresh profile (so each page is a different visitor), all of it killed on drop.
//! Without `chromedriver` and `chromium` the test is skipped with a note, or fails when
//! `CI` is set: the same policy as for an unreachable PostgreSQL.

use std::{
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator, wd::Capabilities};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::{eventually, free_port, status_of};

/// Chromium's flags: no window, no sandbox (tests may run as root, where Chromium's
/// sandbox refuses to start), and nothing that reaches the network on its own.
const CHROMIUM_FLAGS: [&str; 6] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// How long chromedriver may take to answer on its port.
const DRIVER_START: Duration = Duration::from_secs(20);

/// `chromedriver` running for one test, and the browsers it opened; killed on drop.
pub struct Browser {
    driver: Child,
    url: String,
    chromium: PathBuf,
    profiles: PathBuf,
    pages: usize,
}

impl Browser {
    /// Starts `chromedriver` on a free port; `None` (the test is skipped with a note) when
    /// it or `chromium` is not installed and `CI` is unset. With `CI` set, that fails.
    pub async fn start() -> Option<Self> {
        let (Some(chromedriver), Some(chromium)) = (on_path("chromedriver"), on_path("chromium"))
        else {
            let missing = "chromedriver or chromium is not installed \
                           (apt-get install chromium chromium-driver)";
            assert!(std::env::var_os("CI").is_none(), "{missing} and CI is set");
            eprintln!("SKIPPED: {missing}; set CI=1 to make this a failure");
            return None;
        };
        let port = free_port();
        // A process group of its own, so that drop can kill the browsers it started too:
        // chromedriver leaves them running when it is killed.
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let profiles = std::env::temp_dir().join(format!(
            "flashsale-browser-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let browser = Self {
            driver,
            url: format!("http://127.0.0.1:{port}"),
            chromium,
            profiles,
            pages: 0,
        };
        let status = format!("{}/status", browser.url);
        let up = eventually(DRIVER_START, || async { status_of(&status).await == 200 }).await;
        assert!(
            up,
            "chromedriver did not answer on port {port} within {DRIVER_START:?}"
        );
        Some(browser)
    }

    /// A new browser with a fresh profile, showing `url` in a viewport of `width` ×
    /// `height` CSS pixels; `name` says which page a failure is about.
    pub async fn open(&mut self, name: &str, url: &str, (width, height): (u32, u32)) -> Page {
        self.pages += 1;
        let profile = self.profiles.join(format!("profile-{}", self.pages));
        std::fs::create_dir_all(&profile).expect("create a browser profile folder");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({
            "goog:chromeOptions": { "binary": self.chromium, "args": args }
        });
        let capabilities: Capabilities =
            serde_json::from_value(capabilities).expect("capabilities are an object");
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("{name}: chromedriver opened no browser: {e}"));
        let page = Page {
            client,
            name: name.to_owned(),
        };
        page.resize((width, height)).await;
        page.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot load {url}: {e}"));
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and every browser process it started.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profiles);
    }
}

/// The executable `name` in one of the folders of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| file.is_file())
}

/// One browser window showing a page, read and used as a person would: text as shown,
/// clicks on buttons, keys typed into fields.
pub struct Page {
    client: Client,
    name: String,
}

impl Page {
    /// Runs `script` (a function body; `arguments` are `args`) in the page, and returns
    /// what it returns.
    pub async fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.name))
    }

    /// The text of the element `#id` now, without surrounding white space, as the DOM has
    /// it (not as CSS capitalises it).
    pub async fn text(&self, id: &str) -> String {
        let js = "const e = document.getElementById(arguments[0]);\
                  return e === null ? null : e.textContent.trim();";
        match self.script(js, vec![json!(id)]).await {
            Value::String(text) => text,
            _ => panic!("{}: there is no #{id} on the page", self.name),
        }
    }

    /// Whether `#id` is shown (it and its ancestors are displayed).
    pub async fn shown(&self, id: &str) -> bool {
        let js = "const e = document.getElementById(arguments[0]);\
                  return e !== null && e.getClientRects().length > 0;";
        self.script(js, vec![json!(id)]).await == json!(true)
    }

    /// Whether `#id` can be used: not disabled.
    pub async fn enabled(&self, id: &str) -> bool {
        let js = "const e = document.getElementById(arguments[0]);\
                  return e !== null && !e.disabled;";
        self.script(js, vec![json!(id)]).await == json!(true)
    }

    /// Waits up to `within` until the text of `#id` passes `ok`, and returns it; fails
    /// with the last text seen and `expected`, what `ok` looks for.
    pub async fn wait_text(
        &self,
        id: &str,
        expected: &str,
        within: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let met = eventually(within, || async { ok(&self.text(id).await) }).await;
        let text = self.text(id).await;
        assert!(
            met,
            "{}: #{id} shows {text:?} after {within:?}; expected {expected}",
            self.name
        );
        text
    }

    /// Waits up to `within` until `#id` is shown (`true`) or hidden (`false`).
    pub async fn wait_shown(&self, id: &str, shown: bool, within: Duration) {
        let met = eventually(within, || async { self.shown(id).await == shown }).await;
        let now = if shown { "hidden" } else { "shown" };
        assert!(met, "{}: #{id} is still {now} after {within:?}", self.name);
    }

    /// Clicks the element `#id`, as a mouse would (it must be shown and not covered).
    pub async fn click(&self, id: &str) {
        let element = self.find(id).await;
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: cannot click #{id}: {e}", self.name));
    }

    /// Clears the field `#id` and types `text` into it.
    pub async fn fill(&self, id: &str, text: &str) {
        let field = self.find(id).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("{}: cannot clear #{id}: {e}", self.name));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{}: cannot type into #{id}: {e}", self.name));
    }

    /// Resizes the window so that the page's viewport is `width` × `height` CSS pixels.
    pub async fn resize(&self, (width, height): (u32, u32)) {
        self.set_window((width, height)).await;
        // WebDriver sizes the whole window; headless Chromium still counts a frame around
        // the page. Grow the window by what the frame takes.
        let (inner_width, inner_height) = self.viewport().await;
        let frame = (
            width.saturating_sub(inner_width),
            height.saturating_sub(inner_height),
        );
        if frame != (0, 0) {
            self.set_window((width + frame.0, height + frame.1)).await;
        }
        let viewport = self.viewport().await;
        assert_eq!(
            viewport,
            (width, height),
            "{}: the page's viewport",
            self.name
        );
    }

    /// The page's viewport (`innerWidth`, `innerHeight`), in CSS pixels.
    pub async fn viewport(&self) -> (u32, u32) {
        let sizes = self
            .script("return [window.innerWidth, window.innerHeight];", vec![])
            .await;
        let size = |i: usize| {
            sizes[i]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .expect("a size in pixels")
        };
        (size(0), size(1))
    }

    /// Sets the window's outer size.
    async fn set_window(&self, (width, height): (u32, u32)) {
        self.client
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("{}: cannot resize the window: {e}", self.name));
    }

    /// A PNG of what the window shows.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("{}: no screenshot: {e}", self.name))
    }

    /// Ends the session: the browser quits.
    pub async fn close(self) {
        let name = self.name;
        self.client
            .close()
            .await
            .unwrap_or_else(|e| panic!("{name}: the browser did not quit: {e}"));
    }

    /// The element `#id`.
    async fn find(&self, id: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("{}: no #{id}: {e}", self.name))
    }
}
