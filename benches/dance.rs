//! The Earthdata Login dance benchmark (issue 14, "Measure"): curl doing the dance itself
//! against a plain client through authproxy, on the loopback model of
//! `tests/it/edl/world.rs`. Run it with `bench/dance` (builds the release binary first),
//! or `cargo bench --bench dance -- --help`.

#[path = "../tests/it/edl/world.rs"]
mod world;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use world::{Options, World};

const USAGE: &str = "\
bench/dance [--rounds N] [--later N] [--concurrent N] [--size BYTES] [--authproxy PATH]
  --rounds N      first requests per client kind (default 10)
  --later N       later requests per client kind (default 50)
  --concurrent N  concurrent first requests (default 100)
  --size BYTES    length of the data file (default 1000000)
  --authproxy P   the binary (default target/release/authproxy)";

struct Args {
    rounds: usize,
    later: usize,
    concurrent: usize,
    size: u64,
    authproxy: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 10,
        later: 50,
        concurrent: 100,
        size: 1_000_000,
        authproxy: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/release/authproxy"
        )),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next().unwrap_or_else(|| {
                eprintln!("{arg} needs a value\n{USAGE}");
                std::process::exit(2)
            })
        };
        let number = |v: String| -> u64 {
            v.parse().unwrap_or_else(|_| {
                eprintln!("not a number: {v}\n{USAGE}");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            // cargo bench appends --bench.
            "--bench" => {}
            "--rounds" => a.rounds = number(value()).max(1) as usize,
            "--later" => a.later = number(value()).max(1) as usize,
            "--concurrent" => a.concurrent = number(value()).max(1) as usize,
            "--size" => a.size = number(value()),
            "--authproxy" => a.authproxy = PathBuf::from(value()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => {
                eprintln!("unknown argument: {other}\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    a
}

/// One curl run: its wall time, the final status and the bytes received.
struct Fetch {
    secs: f64,
    status: u16,
    bytes: u64,
    error: String,
}

impl Fetch {
    fn ok(&self, size: u64) -> bool {
        self.status == 200 && self.bytes == size
    }
    fn describe(&self) -> String {
        if self.status == 0 {
            format!("no response ({})", self.error.trim())
        } else {
            format!("got {} with {} bytes", self.status, self.bytes)
        }
    }
}

/// `curl -sS -o /dev/null -w ...` with `args`, not yet waited for.
fn curl(args: &[String]) -> Child {
    Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{size_download}"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs (scripts/install-deps installs it)")
}

fn finish(child: Child, started: Instant) -> Fetch {
    let out = child.wait_with_output().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut w = w.split_whitespace();
    Fetch {
        secs,
        status: w.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        bytes: w.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        error: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn fetch(args: &[String]) -> Fetch {
    let started = Instant::now();
    finish(curl(args), started)
}

/// curl's own dance: `-L --netrc-file N -c J -b J --cacert CA URL`.
fn dance_args(dir: &Path, world: &World, url: &str) -> Vec<String> {
    let netrc = dir.join(".netrc");
    if !netrc.exists() {
        world.netrc(dir);
        world.write_ca(dir);
    }
    let p = |name: &str| dir.join(name).display().to_string();
    vec![
        "-L".into(),
        "--netrc-file".into(),
        p(".netrc"),
        "-c".into(),
        p("jar.txt"),
        "-b".into(),
        p("jar.txt"),
        "--cacert".into(),
        p("edl-ca.pem"),
        url.into(),
    ]
}

/// `authproxy serve` in a fresh HOME prepared by the world, on a free loopback port.
struct Daemon {
    child: Child,
    port: u16,
    home: tempfile::TempDir,
}

impl Daemon {
    fn start(binary: &Path, world: &World) -> Daemon {
        let home = tempfile::tempdir().unwrap();
        world.proxy_home(home.path());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let h = home.path();
        let log = std::fs::File::create(h.join("authproxy.log")).unwrap();
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(h)
            .env("HOME", h)
            .env("XDG_CONFIG_HOME", h.join(".config"))
            .env("XDG_STATE_HOME", h.join(".local/state"))
            .env("XDG_DATA_HOME", h.join(".local/share"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for var in [
            "RUST_LOG",
            "AUTHPROXY_CONFIG",
            "NETRC",
            "DAPRCFILE",
            "NCRCENV_RC",
            "NCRCENV_HOME",
            "NCRCENV_IGNORE",
            "CREDENTIALS_DIRECTORY",
            "http_proxy",
            "HTTP_PROXY",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            eprintln!(
                "cannot start {}: {e} (build it: cargo build --release)",
                binary.display()
            );
            std::process::exit(1)
        });
        let mut d = Daemon { child, port, home };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || d.child.try_wait().unwrap().is_some() {
                eprintln!("authproxy did not listen on 127.0.0.1:{port}:\n{}", d.log());
                std::process::exit(1)
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    fn proxy_args(&self, url: &str) -> Vec<String> {
        vec![
            "-x".into(),
            format!("http://127.0.0.1:{}", self.port),
            url.into(),
        ]
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("authproxy.log")).unwrap_or_default()
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

struct Stats {
    median: f64,
    mean: f64,
    min: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stats {
        median,
        mean: v.iter().sum::<f64>() / n as f64,
        min: v[0],
        max: v[n - 1],
    }
}

fn ms(s: f64) -> String {
    format!("{:.2}", s * 1000.0)
}

/// A row of timings, or why there is none.
enum Row {
    Times(Stats),
    Failed(String),
}

fn row(label: &str, r: &Row, baseline: Option<&Stats>) -> String {
    match r {
        Row::Times(s) => {
            let ratio = baseline
                .map(|b| format!("{:.2}x", s.median / b.median))
                .unwrap_or_else(|| "1.00x".into());
            format!(
                "| {label} | {} | {} | {} | {} | {ratio} |",
                ms(s.median),
                ms(s.mean),
                ms(s.min),
                ms(s.max)
            )
        }
        Row::Failed(why) => format!("| {label} | {why} | | | | - |"),
    }
}

/// The timings of one kind of client; the first fetch that does not get the bytes ends it.
#[derive(Default)]
struct Series {
    times: Vec<f64>,
    failed: Option<String>,
}

impl Series {
    fn running(&self) -> bool {
        self.failed.is_none()
    }

    fn add(&mut self, f: Fetch, size: u64, context: &str) {
        if !self.running() {
            return;
        }
        if f.ok(size) {
            self.times.push(f.secs);
        } else {
            self.failed = Some(format!("not followed ({context}{})", f.describe()));
        }
    }

    fn row(self) -> Row {
        match self.failed {
            Some(why) => Row::Failed(why),
            None => Row::Times(stats(self.times)),
        }
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = rt.block_on(World::start(Options {
        size: a.size,
        ..Options::default()
    }));
    let url = world.data_url("/granule.nc");
    let version = Command::new(&a.authproxy)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "not found".into());
    let curl_version = Command::new("curl")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .split(' ')
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    println!("## The Earthdata Login dance, loopback model (tests/it/edl/world.rs)\n");
    println!(
        "{} ({}), {curl_version}; data file {} bytes; login host https://localhost, data host http://127.0.0.1.\n",
        a.authproxy.display(),
        version,
        a.size
    );

    // (a) The first request: the whole dance, from nothing. The two clients take turns,
    // so that load from elsewhere on the machine falls on both alike.
    let scratch = tempfile::tempdir().unwrap();
    let (mut curl_first, mut proxy_first) = (Series::default(), Series::default());
    let (mut curl_first_logins, mut proxy_first_logins) = (0, 0);
    for i in 0..a.rounds {
        let dir = scratch.path().join(format!("first-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let logins0 = world.logins();
        curl_first.add(fetch(&dance_args(&dir, &world, &url)), a.size, "");
        curl_first_logins += world.logins() - logins0;
        if proxy_first.running() {
            let d = Daemon::start(&a.authproxy, &world);
            let logins0 = world.logins();
            proxy_first.add(fetch(&d.proxy_args(&url)), a.size, "");
            proxy_first_logins += world.logins() - logins0;
            d.stop();
        }
    }
    let (curl_first, proxy_first) = (curl_first.row(), proxy_first.row());
    println!(
        "### (a) First request through the dance ({} rounds of each kind, taking turns; each from a fresh jar / a freshly started daemon; goal: authproxy <= 1.2x curl)\n",
        a.rounds
    );
    println!("| client | median ms | mean ms | min ms | max ms | x curl |\n|---|---:|---:|---:|---:|---:|");
    let base = match &curl_first {
        Row::Times(s) => Some(s),
        Row::Failed(_) => None,
    };
    println!(
        "{}",
        row("curl -L --netrc-file N -c J -b J", &curl_first, None)
    );
    println!("{}", row("curl -x authproxy", &proxy_first, base));
    println!(
        "\nlogins at the login host: curl {curl_first_logins}, authproxy {proxy_first_logins}\n"
    );

    // (b) Later requests: a session exists (curl's in its jar, the daemon's in its own).
    let later_dir = scratch.path().join("later");
    std::fs::create_dir_all(&later_dir).unwrap();
    let jar = later_dir.join("jar.txt").display().to_string();
    let (mut direct, mut through, mut passed) =
        (Series::default(), Series::default(), Series::default());
    direct.add(
        fetch(&dance_args(&later_dir, &world, &url)),
        a.size,
        "curl's dance: ",
    );
    let daemon = Daemon::start(&a.authproxy, &world);
    through.add(fetch(&daemon.proxy_args(&url)), a.size, "first request ");
    through.times.clear();
    direct.times.clear();
    // `passed` works before the dance does: the client brings curl's cookie along.
    let mut with_cookie = daemon.proxy_args(&url);
    with_cookie.extend(["-b".into(), jar.clone()]);
    for _ in 0..a.later {
        direct.add(fetch(&["-b".into(), jar.clone(), url.clone()]), a.size, "");
        if through.running() {
            through.add(fetch(&daemon.proxy_args(&url)), a.size, "");
        }
        passed.add(fetch(&with_cookie), a.size, "");
    }
    daemon.stop();
    let (direct, through, passed) = (direct.row(), through.row(), passed.row());
    println!(
        "### (b) Later requests ({} curl runs of each kind, taking turns, after one dance; goal: authproxy <= 1.1x direct)\n",
        a.later
    );
    println!("| client | median ms | mean ms | min ms | max ms | x direct |\n|---|---:|---:|---:|---:|---:|");
    let base = match &direct {
        Row::Times(s) => Some(s),
        Row::Failed(_) => None,
    };
    println!(
        "{}",
        row("curl -b J, direct to the data server", &direct, None)
    );
    println!("{}", row("curl -x authproxy", &through, base));
    println!(
        "{}",
        row(
            "curl -x authproxy -b J (the client's own cookie)",
            &passed,
            base
        )
    );
    println!();

    // (c) Many first requests at once.
    let n = a.concurrent;
    let concurrent = |make: &dyn Fn(usize) -> Vec<String>| -> (usize, f64, usize, String) {
        let logins0 = world.logins();
        let started = Instant::now();
        let children: Vec<Child> = (0..n).map(|i| curl(&make(i))).collect();
        let fetches: Vec<Fetch> = children.into_iter().map(|c| finish(c, started)).collect();
        let wall = started.elapsed().as_secs_f64();
        let ok = fetches.iter().filter(|f| f.ok(a.size)).count();
        let first_bad = fetches
            .iter()
            .find(|f| !f.ok(a.size))
            .map(|f| f.describe())
            .unwrap_or_default();
        (world.logins() - logins0, wall, ok, first_bad)
    };
    let (curl_logins, curl_wall, curl_ok, curl_bad) = concurrent(&|i| {
        let dir = scratch.path().join(format!("many-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        dance_args(&dir, &world, &url)
    });
    let daemon = Daemon::start(&a.authproxy, &world);
    let (proxy_logins, proxy_wall, proxy_ok, proxy_bad) = concurrent(&|_| daemon.proxy_args(&url));
    daemon.stop();
    println!("### (c) {n} concurrent first requests (goal: 1 login through authproxy)\n");
    println!("| client | logins at the login host | got the bytes | wall s | note |\n|---|---:|---:|---:|---|");
    let note = |ok: usize, bad: &str| {
        if ok == n {
            String::new()
        } else {
            format!("not followed (first failure: {bad})")
        }
    };
    println!(
        "| curl x{n}, each its own jar | {curl_logins} | {curl_ok}/{n} | {curl_wall:.2} | {} |",
        note(curl_ok, &curl_bad)
    );
    println!(
        "| curl -x authproxy x{n} | {proxy_logins} | {proxy_ok}/{n} | {proxy_wall:.2} | {} |",
        note(proxy_ok, &proxy_bad)
    );
    drop(world);
    rt.shutdown_timeout(Duration::from_secs(2));
}
