//! Wiring: binds the three listeners, builds the state they share, and runs until cancelled.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::metrics::Metrics;
use crate::config::Config;
use crate::downstream::health::AppHealth;
use crate::serve::{self, Body, ConnLimits, Listener, Serving};
use crate::session::buffer::GlobalBytes;
use crate::session::registry::Registry;
use crate::upstream::clouds::{CloudIds, KeyError};
use crate::webhook::limit::{FirstSeen, WebhookGate};

/// State shared by the listeners and session tasks.
pub struct Shared {
    /// The configuration in force; swapped whole by a reload. Read it through [`Shared::config`].
    config: ArcSwap<Config>,
    /// Bumped by every applied reload, so sessions pick up new limits.
    pub config_generation: AtomicU64,
    pub metrics: Metrics,
    /// Mints and opens the `/c/<id>` cloud ids of local URLs.
    pub clouds: CloudIds,
    /// Rate limits and the in-flight bound of `POST /webhook`.
    pub webhook_gate: WebhookGate,
    /// Bounds requests proxied to the app at once.
    pub proxy_slots: Arc<tokio::sync::Semaphore>,
    /// Cloud origins already reported as refused.
    pub refused_origins: FirstSeen,
    pub sessions: Registry,
    pub tls: Arc<rustls::ClientConfig>,
    /// `host:port` of the local listener as written into URLs handed to the app.
    pub local_advertise: String,
    pub app_client: Client<HttpConnector, Body>,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    /// Set when shutdown starts; `/readyz` fails from then on.
    pub draining: AtomicBool,
    /// The app server's health, probed in the background.
    pub health: AppHealth,
    /// Bytes buffered across every session.
    pub buffers: Arc<GlobalBytes>,
    /// Bounds webhooks re-sent to a restarted app at once.
    pub refire_slots: tokio::sync::Semaphore,
    /// Registration with the cloud.
    pub registration: crate::registry::Status,
}

impl Shared {
    /// The configuration in force. Take it once per decision: a reload may swap it.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Installs a validated configuration (a reload); sessions apply it at their next event.
    pub fn set_config(&self, config: Config) {
        self.config.store(Arc::new(config));
        self.config_generation.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why Tether could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind the {which} listener on {addr}: {source}")]
    Bind {
        which: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    CloudIdKey(#[from] KeyError),
}

/// A started Tether: its bound addresses, and the handle to stop it.
pub struct Running {
    pub public: SocketAddr,
    pub local: SocketAddr,
    pub admin: SocketAddr,
    pub shared: Arc<Shared>,
    admin_cancel: CancellationToken,
    admin_tracker: TaskTracker,
}

/// How long open HTTP requests may run on after shutdown starts.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Idle keep-alive connections kept to the app: enough for bursts, bounded in descriptors.
const APP_POOL_MAX_IDLE: usize = 64;

/// Warns when `ulimit -n` is below what the connection caps could use: running out of
/// descriptors breaks the app's socket, cloud dials and health probes, not just the
/// listener that used them up.
fn warn_if_descriptors_short(config: &Config) {
    let needed = serve::descriptors_needed(&config.http);
    match serve::open_files_limit() {
        Some(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            public = config.http.max_connections_public,
            local = config.http.max_connections_local,
            admin = config.http.max_connections_admin,
            "the open-files limit is below what the connection caps allow; raise ulimit -n or lower http.max_connections_*"
        ),
        Some(limit) => tracing::debug!(limit, needed, "open-files limit leaves room for the connection caps"),
        None => tracing::debug!("open-files limit unknown on this platform"),
    }
}

async fn bind(which: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            which,
            addr,
            source,
        })
}

/// Binds every listener and starts serving; returns once all are bound.
pub async fn start(config: Config, cancel: CancellationToken) -> Result<Running, StartError> {
    let public = bind("public", config.listen.public).await?;
    let local = bind("local", config.listen.local).await?;
    let admin = bind("admin", config.listen.admin).await?;
    let local_addr = local.local_addr().map_err(|source| StartError::Bind {
        which: "local",
        addr: config.listen.local,
        source,
    })?;
    let local_advertise = config.listen.local_advertise.clone().unwrap_or_else(|| {
        // A wildcard address cannot be dialled; the app reaches a wildcard listener on loopback.
        if local_addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", local_addr.port())
        } else {
            local_addr.to_string()
        }
    });
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.app.connect_timeout));
    connector.set_nodelay(true);
    // The timer lets the pool reap idle app connections; without one they are only
    // noticed as expired when next checked out, and hold a descriptor until then.
    let app_client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(APP_POOL_MAX_IDLE)
        .build(connector);
    warn_if_descriptors_short(&config);
    let registration = crate::registry::Status::default();
    let mut metrics = Metrics::new();
    registration.register_metrics(metrics.registry_mut());
    let webhook_gate = WebhookGate::new(&config.limits);
    webhook_gate.register_metrics(metrics.registry_mut());
    let clouds = match &config.state.dir {
        Some(dir) => CloudIds::persistent(dir)?,
        None => CloudIds::ephemeral()?,
    };
    if config.cloud.allowed_origins.admits_any() {
        tracing::warn!("cloud.allowed_origins admits every origin: any webhook can make Tether dial anywhere with the app's init");
    }
    let shared = Arc::new(Shared {
        metrics,
        clouds,
        webhook_gate,
        refused_origins: FirstSeen::default(),
        proxy_slots: Arc::new(tokio::sync::Semaphore::new(
            config.http.max_proxied_in_flight,
        )),
        sessions: Registry::default(),
        tls: crate::upstream::tls_config()?,
        local_advertise,
        app_client,
        cancel: cancel.clone(),
        tracker: TaskTracker::new(),
        draining: AtomicBool::new(false),
        health: AppHealth::default(),
        buffers: GlobalBytes::new(config.buffer.global_max_bytes),
        refire_slots: tokio::sync::Semaphore::new(config.session.refire_concurrency),
        registration,
        config: ArcSwap::from_pointee(config),
        config_generation: AtomicU64::new(0),
    });
    shared
        .tracker
        .spawn(crate::downstream::health::run(shared.clone()));
    if shared.config().registration.enabled {
        shared.tracker.spawn(crate::registry::run(shared.clone()));
    }
    let addr_of = |l: &TcpListener| l.local_addr().ok();
    let admin_cancel = CancellationToken::new();
    let admin_tracker = TaskTracker::new();
    let running = Running {
        public: addr_of(&public).unwrap_or(shared.config().listen.public),
        local: local_addr,
        admin: addr_of(&admin).unwrap_or(shared.config().listen.admin),
        shared: shared.clone(),
        admin_cancel: admin_cancel.clone(),
        admin_tracker: admin_tracker.clone(),
    };
    let s = shared.clone();
    spawn_listener(&shared, Listener::Public, public, move |req, peer| {
        let s = s.clone();
        async move {
            if req.method() == Method::POST && req.uri().path() == "/webhook" {
                crate::webhook::intake::handle(s, req, peer).await
            } else {
                crate::downstream::proxy::handle(s, req, peer).await
            }
        }
    });
    let s = shared.clone();
    spawn_listener(&shared, Listener::Local, local, move |req, _| {
        crate::downstream::listener::handle(s.clone(), req)
    });
    // The admin listener outlives the drain: /readyz answers 503 while sessions close,
    // and /metrics stays scrapeable until the end.
    let s = shared.clone();
    let serving = serving(&shared, Listener::Admin, &admin_cancel, &admin_tracker);
    admin_tracker.spawn(serve::serve(
        admin,
        move |req, _| crate::admin::server::handle(s.clone(), req),
        serving,
    ));
    tracing::info!(
        public = %running.public, local = %running.local, admin = %running.admin,
        app = %shared.config().app.url, "tether listening"
    );
    warn_if_admin_data_disabled(&shared.config());
    Ok(running)
}

/// Says once, at start or when a reload turns them off, that `/sessions` and `/config`
/// answer 403 and how to turn them on.
fn warn_if_admin_data_disabled(config: &Config) {
    if config.admin.token.is_empty() && !crate::admin::auth::is_loopback(config.listen.admin.ip()) {
        tracing::warn!(
            admin = %config.listen.admin,
            "{}",
            crate::admin::server::NO_TOKEN_MESSAGE.trim_end()
        );
    }
}

fn spawn_listener<H, F>(shared: &Arc<Shared>, which: Listener, listener: TcpListener, handler: H)
where
    H: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let serving = serving(shared, which, &shared.cancel, &shared.tracker);
    shared
        .tracker
        .spawn(serve::serve(listener, handler, serving));
}

/// How `which` is served: its bounds read from the configuration in force at each
/// accepted connection, its metrics, and the token and tracker it stops and drains with.
fn serving(
    shared: &Arc<Shared>,
    which: Listener,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Serving {
    let s = Arc::downgrade(shared);
    let fallback = ConnLimits::of(&shared.config().http, which);
    Serving {
        which,
        // Weak: the accept loop must not keep the shared state alive by itself.
        limits: Arc::new(move || {
            s.upgrade().map_or_else(
                || fallback.clone(),
                |s| ConnLimits::of(&s.config().http, which),
            )
        }),
        metrics: shared.metrics.listener(which),
        cancel: cancel.clone(),
        tracker: tracker.clone(),
        drain: HTTP_DRAIN,
    }
}

impl Running {
    /// Stops accepting, ends every session (telling both peers), and waits up to `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let shared = self.shared;
        shared.draining.store(true, Ordering::Relaxed);
        shared.cancel.cancel();
        shared.tracker.close();
        if tokio::time::timeout(grace, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(?grace, "shutdown grace ran out with tasks still running");
        }
        self.admin_cancel.cancel();
        self.admin_tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin_tracker.wait()).await;
    }
}

/// How often the config file is read for changes. Reading the path (not watching an
/// inode) follows Kubernetes' ConfigMap updates, which swap a symlink in the directory.
const CONFIG_POLL: Duration = Duration::from_secs(1);

/// Reloads on SIGHUP and whenever the file's content changes, until shutdown. `hangup`
/// is the SIGHUP stream, registered by the caller before the listeners were bound so an
/// early signal never takes the default action (exit). Without a file, SIGHUP is logged
/// and ignored.
#[cfg(unix)]
pub fn spawn_reloader(
    running: &Running,
    path: Option<std::path::PathBuf>,
    mut hangup: tokio::signal::unix::Signal,
) {
    let shared = running.shared.clone();
    shared.clone().tracker.spawn(async move {
        // Unknown at first: the first poll compares with the running configuration.
        let mut last = None;
        loop {
            let forced = tokio::select! {
                () = shared.cancel.cancelled() => return,
                _ = hangup.recv() => true,
                () = tokio::time::sleep(CONFIG_POLL) => false,
            };
            let Some(path) = path.as_deref() else {
                if forced {
                    tracing::warn!("SIGHUP: no config file was given, nothing to reload");
                }
                continue;
            };
            let now = std::fs::read(path).ok();
            if forced || now != last {
                last = now;
                reload(&shared, path, forced);
            }
        }
    });
}

/// Reads, validates and applies the config file. A file that does not validate is
/// reported and the running configuration kept; listener changes are reported as needing
/// a restart and not applied.
pub fn reload(shared: &Shared, path: &std::path::Path, forced: bool) {
    let mut new = match Config::load(Some(path)) {
        Ok(c) => c,
        Err(e) => {
            shared.metrics.config_reload("error");
            tracing::error!(error = %e, "config reload rejected; the running configuration is kept");
            return;
        }
    };
    let old = shared.config();
    let changes = crate::config::reload::diff(&old.entries(), &new.entries());
    // Masked in the entries, so a rotated token (same mask) shows up only here.
    let token_rotated = !old.admin.token.is_empty()
        && !new.admin.token.is_empty()
        && old.admin.token != new.admin.token;
    if changes.is_empty() && !forced && !token_rotated {
        // The file was rewritten with what is already in force.
        return;
    }
    for c in &changes {
        if c.needs_restart {
            tracing::warn!(key = %c.key, old = %c.old, new = %c.new, "changed key needs a restart; not applied");
        } else {
            tracing::info!(key = %c.key, old = %c.old, new = %c.new, "config changed");
        }
    }
    if token_rotated {
        tracing::info!(
            key = "admin.token",
            "config changed: the admin token was replaced"
        );
    }
    // What was bound or built once stays as it was.
    new.listen = old.listen.clone();
    new.registration.enabled = old.registration.enabled;
    new.state = old.state.clone();
    new.limits.webhooks_in_flight = old.limits.webhooks_in_flight;
    new.limits.webhook_rate_per_source = old.limits.webhook_rate_per_source;
    new.limits.webhook_burst_per_source = old.limits.webhook_burst_per_source;
    new.limits.webhook_rate = old.limits.webhook_rate;
    new.limits.webhook_burst = old.limits.webhook_burst;
    new.session.refire_concurrency = old.session.refire_concurrency;
    new.http.max_proxied_in_flight = old.http.max_proxied_in_flight;
    if new.log.level != old.log.level {
        if let Err(e) = crate::logging::set_level(&new.log.level) {
            tracing::warn!(error = %e, "log level not changed");
        }
    }
    if !old.admin.token.is_empty() {
        warn_if_admin_data_disabled(&new);
    }
    shared.set_config(new);
    shared.metrics.config_reload("ok");
}
