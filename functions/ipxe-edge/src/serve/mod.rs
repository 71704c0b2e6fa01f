//! `ipxe-edge serve`: the whole service on one machine. The boot and redeem handlers are the
//! Lambda functions' own; around them this plays API Gateway (mutual TLS, events), S3 (an
//! embedded SigV4-checking endpoint) and DynamoDB (a file-backed ledger), unless real services
//! are named.

pub mod acme;
mod bootstrap;
mod certificates;
pub mod front;
pub mod metrics;
pub mod tls;

use crate::datadir::{self, DataDir, DataDirError, EMBEDDED_BUCKET};
use crate::embedded::s3_endpoint;
use crate::embedded::scratch::EmbeddedScratch;
use crate::listener::{Limits, ListenerStats};
use crate::ops::backends::{self, BackendArgs, Journal, Ledger, Store};
use crate::ops::image::ScriptOptions;
use ipxe_edge_core::api::trust::Trust;
use ipxe_edge_core::domain::clock;
use ipxe_edge_core::domain::identity::ChainVerifier;
use ipxe_edge_core::domain::token::Keyring;
use ipxe_edge_core::lambda::http::{BootApp, CertHeader, RedeemApp};
use ipxe_edge_core::lambda::init::{load_trust_bundle, s3_client, static_sdk_config, InitError, Timeouts};
use ipxe_edge_core::service::boot::{BootService, BootSettings};
use ipxe_edge_core::service::redeem::RedeemService;
use ipxe_edge_core::storage::adapters::s3::S3Store;
use ipxe_edge_core::storage::keys;
use ipxe_edge_core::storage::presign_cache::CachingPresigner;
use ipxe_edge_core::storage::records::Records;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Boot listener (HTTPS, client certificate required); repeat it to listen on several
    /// addresses (IPv4 and IPv6: `--listen 0.0.0.0:8443 --listen [::]:8443`). URLs handed out use
    /// the first one's port.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: Vec<SocketAddr>,
    /// A TOML file of settings, keyed by these flags' names (`max-connections = 300`,
    /// `listen = ["0.0.0.0:8443", "[::]:8443"]`); a flag given on the command line (or its
    /// environment variable) wins over the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print every setting's effective value and where it came from (flag, environment, the
    /// config file's line, default), as TOML, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Secrets listener (HTTPS, no client certificate, like the production split); repeatable
    /// like --listen.
    #[arg(long, default_value = "127.0.0.1:8444")]
    pub secrets_listen: Vec<SocketAddr>,
    /// Serve the secrets listener over plain HTTP, for booted systems whose TLS client cannot
    /// talk to it (busybox's built-in TLS); only on a network you trust. Production's secrets
    /// endpoint is HTTPS.
    #[arg(long)]
    pub secrets_http: bool,
    /// Embedded S3 endpoint (HTTPS with the server certificate; every request must carry a
    /// valid SigV4 signature).
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub s3_listen: SocketAddr,
    /// Serve the embedded S3 endpoint over plain HTTP: kernels and initrds then travel
    /// unprotected and anyone on the path can swap them. Only on a network you trust.
    #[arg(long)]
    pub s3_http: bool,
    /// Open connections per listener.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_CONNECTIONS, value_parser = parse_connections)]
    pub max_connections: usize,
    /// Open connections one client address may hold on a listener (gateways behind one NAT
    /// share an address: keep it above how many of them boot at once).
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_PER_CLIENT, value_parser = parse_connections)]
    pub max_connections_per_client: usize,
    /// Bytes each gateway's scratch space may hold on the embedded endpoint, uploads in
    /// progress included (`1GiB`, `500MiB`, or bytes).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub scratch_quota: u64,
    /// Present this certificate chain (PEM, leaf first, e.g. certbot's fullchain.pem) on every
    /// listener instead of the self-made ones; reloaded when the file changes. Give it twice (an
    /// RSA and an ECDSA pair) to let clients that speak ECDSA use it: iPXE before 2.0 needs RSA.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Vec<PathBuf>,
    /// The private key of --tls-cert (PEM, e.g. certbot's privkey.pem), once per --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Vec<PathBuf>,
    #[command(flatten)]
    pub acme: acme::AcmeArgs,
    /// Seconds between checks of --tls-cert and --tls-key for changes.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600), hide = true)]
    pub tls_reload_interval: u64,
    /// Serve Prometheus metrics at /metrics and a health check at /healthz on this address
    /// (plain HTTP: keep it on loopback or a private network) [default: off].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds between sweeps of expired entries from the embedded used-token ledger.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600), hide = true)]
    pub ledger_sweep_interval: u64,
    /// Host name or address written into the URLs handed to gateways [default: the first
    /// --acme-domain, else the listen address].
    #[arg(long)]
    pub public_host: Option<String>,
    /// Consecutive failed boots of a gateway's release after which it boots its last known good
    /// release instead (0: never); a channel's own setting wins (FALLBACK_AFTER).
    #[arg(long, default_value_t = BootSettings::DEFAULT_FALLBACK_AFTER.into(), value_parser = clap::value_parser!(u64).range(BootSettings::FALLBACK_AFTER_RANGE))]
    pub fallback_after: u64,
    /// Seconds a boot has to reach its release's health gate; also the lifetime of check-in URLs
    /// (HEALTH_DEADLINE_SECONDS).
    #[arg(long, default_value_t = BootSettings::DEFAULT_HEALTH_DEADLINE_SECS, value_parser = clap::value_parser!(u64).range(BootSettings::HEALTH_DEADLINE_RANGE))]
    pub health_deadline: u64,
    /// Lifetime of presigned kernel and initrd URLs, in seconds (the boot function's PRESIGN_TTL_SECONDS).
    #[arg(long, default_value_t = BootSettings::DEFAULT_PRESIGN_TTL_SECS, value_parser = clap::value_parser!(u64).range(BootSettings::PRESIGN_TTL_RANGE))]
    pub presign_ttl: u64,
    /// Lifetime of one-time secrets tokens, in seconds (TOKEN_TTL_SECONDS).
    #[arg(long, default_value_t = BootSettings::DEFAULT_TOKEN_TTL_SECS, value_parser = clap::value_parser!(u64).range(BootSettings::TOKEN_TTL_RANGE))]
    pub token_ttl: u64,
    /// Days before a gateway certificate expires from which its boots are logged
    /// (`cert_expiring`) and counted, and --auto-renew renews it (RENEWAL_WINDOW_DAYS).
    #[arg(long, default_value_t = BootSettings::DEFAULT_RENEWAL_WINDOW_DAYS, value_parser = clap::value_parser!(u64).range(BootSettings::RENEWAL_WINDOW_DAYS_RANGE))]
    pub renewal_window_days: u64,
    /// Renew gateway certificates that expire within the renewal window with the data
    /// directory's CA, and stage them for the gateways to fetch through ${renewal_url}.
    #[arg(long)]
    pub auto_renew: bool,
    /// Validity of the certificates --auto-renew issues, in days.
    #[arg(long, default_value_t = crate::ops::renewal::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=ipxe_edge_pki::MAX_VALIDITY_DAYS as i64))]
    pub auto_renew_days: u32,
    /// Cross-signing URL written into renewed autoexec.ipxe files (as `image script --crosscert`).
    #[arg(long)]
    pub renewal_crosscert: Option<String>,
    /// NTP server renewed autoexec.ipxe files set the clock from (as `image script --ntp`;
    /// `off` leaves the clock alone).
    #[arg(long, default_value = crate::ops::image::DEFAULT_NTP_SERVER)]
    pub renewal_ntp: String,
    /// Seconds between looks at the gateways' certificates (renewals and expiry gauges).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400), hide = true)]
    pub certificate_check_interval: u64,
    /// Retire a gateway's older certificates at its first boot with a renewed one
    /// (RETIRE_OLD_AFTER_FIRST_BOOT).
    #[arg(long)]
    pub retire_old_after_first_boot: bool,
    /// Tolerance on client certificate validity dates, in seconds (CLOCK_SKEW_SECONDS).
    #[arg(long, default_value_t = ipxe_edge_core::domain::identity::DEFAULT_CLOCK_SKEW.as_secs(), value_parser = clap::value_parser!(u64).range(BootSettings::CLOCK_SKEW_RANGE))]
    pub clock_skew: u64,
}

impl ServeArgs {
    /// The boot service's settings from these flags: the one place they are mapped (the Lambda
    /// function fills the same type from its environment).
    pub fn boot_settings(&self, secrets_base_url: String) -> BootSettings {
        BootSettings {
            presign_ttl: Duration::from_secs(self.presign_ttl),
            token_ttl: Duration::from_secs(self.token_ttl),
            clock_skew: Duration::from_secs(self.clock_skew),
            secrets_base_url,
            fallback_after: self.fallback_after as u32,
            health_deadline: Duration::from_secs(self.health_deadline),
            renewal_window: Duration::from_secs(self.renewal_window_days * 86_400),
            retire_old_after_first_boot: self.retire_old_after_first_boot,
        }
    }
}

/// A size in bytes, with an optional binary unit (`KiB`, `MiB`, `GiB`, `TiB`).
fn parse_bytes(value: &str) -> Result<u64, String> {
    let error = || format!("{value:?}: a size such as 1GiB, 500MiB or 1048576 (bytes), at least 1MiB");
    let digits = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "K" => 10,
        "MiB" | "M" => 20,
        "GiB" | "G" => 30,
        "TiB" | "T" => 40,
        _ => return Err(error()),
    };
    let bytes = number.parse::<u64>().ok().and_then(|n| n.checked_mul(1 << shift)).ok_or_else(error)?;
    if bytes < 1 << 20 {
        return Err(error());
    }
    Ok(bytes)
}

fn parse_connections(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=65_536).contains(&n) => Ok(n),
        _ => Err("a number of connections from 1 to 65536".into()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen { addr: SocketAddr, what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    #[error(transparent)]
    Op(#[from] crate::ops::OpError),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr, what, source })
}

fn host_for_urls(args: &ServeArgs) -> String {
    match &args.public_host {
        Some(h) => h.clone(),
        None if args.acme.enabled() => args.acme.domains[0].clone(),
        None if args.listen[0].ip().is_unspecified() => "127.0.0.1".into(),
        None => args.listen[0].ip().to_string(),
    }
}

/// `host:port`, with brackets for IPv6 addresses.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub async fn run(data: PathBuf, backends: BackendArgs, args: ServeArgs) -> Result<(), ServeError> {
    backends.check()?;
    let dir = DataDir::open(&data)?;
    match datadir::make_private(dir.root()) {
        Ok(0) => {}
        Ok(fixed) => {
            tracing::warn!(fixed, data = %dir.root().display(), "made files and folders of the data directory private (0600/0700)")
        }
        Err(e) => return Err(ServeError::Bootstrap(format!("cannot make {} private: {e}", dir.root().display()))),
    }
    let public_host = host_for_urls(&args);
    let limits = Limits {
        max_connections: args.max_connections,
        max_per_client: args.max_connections_per_client,
        ..Limits::default()
    };

    let mut boot_listeners = Vec::new();
    for addr in &args.listen {
        boot_listeners.push(bind(*addr, "boot").await?);
    }
    let mut secrets_listeners = Vec::new();
    for addr in &args.secrets_listen {
        secrets_listeners.push(bind(*addr, "secrets").await?);
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    // Loops with nothing to finish (certificate reload and renewal): aborted at shutdown.
    let mut background = tokio::task::JoinSet::new();

    // Storage: the embedded S3 endpoint, or a real one.
    let mut embedded_s3 = None;
    // Scratch space is hosted by the embedded endpoint only.
    let mut scratch_keys: Option<Arc<EmbeddedScratch>> = None;
    let store = backends::open_store(&dir, &backends, Timeouts::Request).await?;
    let presigner = match &store {
        Store::Embedded(_) => {
            let s3_listener = bind(args.s3_listen, "S3").await?;
            let creds = bootstrap::s3_credentials(&dir)?;
            let bucket_dir = dir.s3_root().join(EMBEDDED_BUCKET);
            std::fs::create_dir_all(&bucket_dir).map_err(datadir::io_error(&bucket_dir))?;
            let scheme = if args.s3_http { "http" } else { "https" };
            let public = format!("{scheme}://{}", authority(&public_host, args.s3_listen.port()));
            let scratch = EmbeddedScratch::open(&dir, public.clone())?;
            let service = s3_endpoint::service(dir.s3_root(), &creds, scratch.clone(), args.scratch_quota)
                .map_err(datadir::io_error(&dir.s3_root()))?;
            embedded_s3 = Some((s3_listener, service));
            scratch_keys = Some(scratch);
            // Records are read straight from the files the endpoint serves (no loopback HTTP
            // per read); kernels and initrds go to gateways through presigned URLs of the endpoint.
            Arc::new(S3Store::new(
                s3_client(&static_sdk_config(&public, &creds.access_key, &creds.secret_key, Timeouts::Request), true),
                EMBEDDED_BUCKET,
            ))
        }
        Store::S3(s3) => Arc::new(s3.clone()),
    };
    let records = Records::new(store.as_object_store());
    let records_for_certificates = records.clone();
    let ledger = backends::open_ledger(&dir, &backends, Timeouts::Request).await?;
    if let Ledger::Embedded(ledger) = &ledger {
        let sweeping = ledger.clone();
        tokio::spawn(housekeeping("used-token ledger", Duration::from_secs(args.ledger_sweep_interval), move |now| {
            sweeping.sweep(now)
        }));
    }
    let Some(journal) = backends::open_journal(&dir, &backends, true, Timeouts::Request).await? else {
        unreachable!("serve always has a boot journal")
    };
    if let Journal::Embedded(journal) = &journal {
        let pruning = journal.clone();
        tokio::spawn(housekeeping("boot journal", Duration::from_secs(3600), move |now| pruning.prune(now)));
    }
    let (ledger, journal) = (ledger.as_token_ledger(), journal.as_boot_journal());

    let outcome = bootstrap::ensure(&dir, &records, &public_host).await?;
    let keyring = Arc::new(Keyring::parse(&datadir::read_private_string(&dir.token_keys())?).map_err(InitError::from)?);
    let bundle = load_trust_bundle(&records, keys::TRUST_BUNDLE).await?;
    let verifier = ChainVerifier::new(bundle, Duration::from_secs(args.clock_skew));

    // Send the CA with the leaf: clients that trust the CA by fingerprint only (iPXE's
    // trust anchors) need the certificate itself to verify the chain.
    let server_cert = if args.tls_cert.is_empty() {
        let ca = tls::load_certs(&datadir::read(&dir.ca_cert())?, "CA certificate")?;
        let mut pairs = Vec::new();
        for (cert, key) in [(dir.server_cert(), dir.server_key()), (dir.server_ecdsa_cert(), dir.server_ecdsa_key())] {
            let mut chain = tls::load_certs(&datadir::read(&cert)?, "server certificate")?;
            chain.extend(ca.iter().cloned());
            pairs.push((chain, tls::load_key(&datadir::read_private(&key)?, "server key")?));
        }
        tls::ServerCert::fixed(pairs)?
    } else {
        if args.tls_cert.len() != args.tls_key.len() {
            return Err(ServeError::Bootstrap("give one --tls-key per --tls-cert, in the same order".into()));
        }
        let files: Vec<(PathBuf, PathBuf)> = args.tls_cert.iter().cloned().zip(args.tls_key.iter().cloned()).collect();
        let loaded = tls::ServerCert::from_files(&files)?;
        background.spawn(tls::watch(loaded.clone(), Duration::from_secs(args.tls_reload_interval)));
        loaded
    };
    let acme = args.acme.enabled().then(|| acme::AcmeManager::new(args.acme.clone(), &dir, server_cert.clone()));
    if let Some(manager) = &acme {
        if manager.present_stored() {
            tracing::info!(domains = ?args.acme.domains, "presenting the stored ACME certificate");
        } else {
            tracing::info!(domains = ?args.acme.domains, directory = %args.acme.directory, "no ACME certificate yet: presenting the self-made one until it arrives");
        }
    }
    let mut gateway_verifier = tls::GatewayCertVerifier::new(verifier.clone());
    if acme.is_some() {
        gateway_verifier = gateway_verifier.allowing_acme();
    }
    let boot_tls = tls::server_config(server_cert.clone(), Some(Arc::new(gateway_verifier)), acme.is_some())?;
    let secrets_tls = tls::server_config(server_cert.clone(), None, acme.is_some())?;
    let s3_tls = tls::server_config(server_cert, None, false)?;
    let stats = ListenerStatsSet::default();
    let serve_metrics = Arc::new(metrics::ServeMetrics::new(vec![
        ("boot", stats.boot.clone()),
        ("secrets", stats.secrets.clone()),
        ("s3", stats.s3.clone()),
        ("metrics", stats.metrics.clone()),
    ]));
    let mut health_listeners: Vec<(&'static str, SocketAddr)> = boot_listeners
        .iter()
        .map(|l| ("boot", local_addr(l)))
        .chain(secrets_listeners.iter().map(|l| ("secrets", local_addr(l))))
        .collect();
    if let Some((s3_listener, _)) = &embedded_s3 {
        health_listeners.push(("s3", local_addr(s3_listener)));
    }
    if let Some(addr) = args.metrics_listen {
        let listener = bind(addr, "metrics").await?;
        let caps = vec![("boot", stats.boot.clone()), ("secrets", stats.secrets.clone()), ("s3", stats.s3.clone())];
        let health = Arc::new(metrics::Health { listeners: health_listeners, caps, store: records.store().clone() });
        tasks.spawn(metrics::run(listener, serve_metrics.clone(), health, stats.metrics.clone(), shutdown_rx.clone()));
    }
    if let Some((s3_listener, service)) = embedded_s3 {
        let acceptor = (!args.s3_http).then(|| TlsAcceptor::from(s3_tls));
        let s3_limits = Limits { connection_lifetime: s3_endpoint::S3_CONNECTION_LIFETIME, ..limits };
        tasks.spawn(
            s3_endpoint::run_isolated(s3_listener, service, acceptor, s3_limits, stats.s3.clone(), shutdown_rx.clone())
                .map_err(|e| ServeError::Bootstrap(format!("embedded S3 endpoint: {e}")))?,
        );
    }

    let secrets_scheme = if args.secrets_http { "http" } else { "https" };
    let secrets_base_url = format!("{secrets_scheme}://{}", authority(&public_host, args.secrets_listen[0].port()));
    let secrets_base_url_for_checkins = secrets_base_url.clone();
    let settings = args.boot_settings(secrets_base_url);
    let window = settings.renewal_window;
    let boot = Arc::new(BootApp {
        service: BootService::new(
            records.clone(),
            Arc::new(CachingPresigner::new(presigner)),
            keyring.clone(),
            settings,
        )
        .with_journal(journal.clone()),
        // The TLS handshake verifies with this very verifier, fixed for the process.
        trust: Trust::Fixed(Arc::new(verifier)),
        cert_header: CertHeader::Off,
        metrics: serve_metrics.clone(),
    });
    let redeem = Arc::new(RedeemApp {
        service: {
            let service = RedeemService::new(records, ledger, keyring)
                .with_journal(journal)
                .with_checkin_base_url(secrets_base_url_for_checkins);
            match scratch_keys {
                Some(scratch) => service.with_scratch(scratch),
                None => service,
            }
        },
        metrics: serve_metrics.clone(),
    });

    let public_host_arc: Arc<str> = Arc::from(public_host.as_str());
    let boot_front = front::Front::new(
        front::Route::Boot(boot),
        Some(TlsAcceptor::from(boot_tls)),
        public_host_arc.clone(),
        serve_metrics.clone(),
    );
    for listener in boot_listeners {
        tasks.spawn(front::run(listener, boot_front.clone(), limits, stats.boot.clone(), shutdown_rx.clone()));
    }
    let secrets_front = front::Front::new(
        front::Route::Redeem(redeem),
        (!args.secrets_http).then(|| TlsAcceptor::from(secrets_tls)),
        public_host_arc,
        serve_metrics.clone(),
    );
    for listener in secrets_listeners {
        tasks.spawn(front::run(listener, secrets_front.clone(), limits, stats.secrets.clone(), shutdown_rx.clone()));
    }

    if let Some(manager) = acme {
        // After the listeners: the CA's validation connects to them.
        background.spawn(manager.run());
    }

    let boot_url = format!("https://{}/boot.ipxe", authority(&public_host, args.listen[0].port()));
    let renewals = args.auto_renew.then(|| crate::ops::renewal::RenewOptions {
        boot_url: boot_url.clone(),
        script: ScriptOptions {
            crosscert: args.renewal_crosscert.clone(),
            ntp: (args.renewal_ntp != "off").then(|| args.renewal_ntp.clone()),
        },
        days: args.auto_renew_days,
        key_type: None,
        replace: false,
    });
    if let Some(options) = &renewals {
        crate::ops::image::check_script(&options.boot_url, &options.script)?;
    }
    certificates::check(&records_for_certificates, &dir, renewals.as_ref(), window, &serve_metrics).await;
    background.spawn(certificates::watch(
        records_for_certificates,
        dir.clone(),
        renewals,
        window,
        Duration::from_secs(args.certificate_check_interval),
        serve_metrics.clone(),
    ));
    bootstrap::announce(&dir, &outcome, &boot_url, &public_host);
    tracing::info!(boot = ?args.listen, secrets = ?args.secrets_listen, s3 = %args.s3_listen, public_host = %public_host, "ipxe-edge serve ready");

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    background.abort_all();
    let _ = tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} }).await;
    tracing::info!("stopped");
    Ok(())
}

/// Open connections and refusals of each listener.
#[derive(Default)]
struct ListenerStatsSet {
    boot: Arc<ListenerStats>,
    secrets: Arc<ListenerStats>,
    s3: Arc<ListenerStats>,
    metrics: Arc<ListenerStats>,
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("a bound listener has an address")
}

/// Runs `task` (blocking file work, given now) off the request path at start and then every
/// `every`: the ledger forgets expired used tokens, so that it holds only tokens that could
/// still be presented (a forgotten one is refused as expired anyway); the journal drops old
/// boot records (DynamoDB's TTL does this for the table).
async fn housekeeping<E>(
    what: &'static str,
    every: Duration,
    task: impl Fn(u64) -> Result<usize, E> + Clone + Send + 'static,
) where
    E: std::fmt::Display + Send + 'static,
{
    let mut interval = tokio::time::interval(every);
    loop {
        interval.tick().await;
        let task = task.clone();
        match tokio::task::spawn_blocking(move || task(clock::unix_now())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::debug!(what, removed, "housekeeping removed old entries"),
            Ok(Err(e)) => tracing::warn!(what, error = %e, "housekeeping failed"),
            Err(e) => tracing::warn!(what, error = %e, "housekeeping task failed"),
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
