//! 1,000 gateways boot at once against `ipxe-edge serve` (release build), each as itself and
//! on new connections, as iPXE does: the boot script, the kernel and the initrd through their
//! presigned HTTPS URLs, then the secrets. Prints errors, p50/p99 per step, each gateway's
//! initrd download rate and the server's peak RSS. Clients come from 16 loopback addresses (a
//! farm's gateways are not one address). Two storms: an 8 MiB initrd, then a 256 MiB one (a
//! gateway image of a few hundred MiB), each on a freshly started `serve`.
//!
//! Run: cargo bench -p ipxe-edge --bench boot_storm
//! (`STORM_INITRD_MIB=256` runs only the storm with that initrd size.)

use ipxe_edge_tests::*;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ipxe-edge");
const GATEWAYS: usize = 1000;

fn edge(data: &Path, args: &[&str]) {
    let status = std::process::Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "ipxe-edge {args:?}");
}

/// Enrolls `n` gateways (a few processes at a time) and gives each a secret.
fn enroll(data: &Path, n: usize) -> Vec<Vec<u8>> {
    let names: Vec<String> = (0..n).map(|i| format!("storm-{i}")).collect();
    for chunk in names.chunks(4) {
        let children: Vec<_> = chunk
            .iter()
            .map(|name| {
                std::process::Command::new(BIN)
                    .arg("--data")
                    .arg(data)
                    .args(["gateway", "enroll", name])
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut child in children {
            assert!(child.wait().unwrap().success());
        }
    }
    names
        .iter()
        .map(|name| {
            let cert = std::fs::read(data.join(format!("pki/gateways/{name}.crt"))).unwrap();
            let der = ipxe_edge_core::domain::identity::pem_certificates(&cert).unwrap().remove(0);
            let fp = ipxe_edge_core::domain::identity::Fingerprint::of_der(&der);
            std::fs::write(data.join(format!("s3/ipxe-edge/gateways/{fp}/secrets")), format!("gateway={name}\n"))
                .unwrap();
            [cert, std::fs::read(data.join(format!("pki/gateways/{name}.key"))).unwrap()].concat()
        })
        .collect()
}

fn client(ca: &[u8], identity: Option<&[u8]>, source: IpAddr) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap())
        .local_address(source)
        .pool_max_idle_per_host(0)
        // A thousand 256 MiB downloads take minutes on two cores; the last ones wait their turn.
        .timeout(Duration::from_secs(900));
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(pem).unwrap());
    }
    builder.build().unwrap()
}

/// The answer's status and its bytes; `keep` false counts them without holding them (a
/// thousand 256 MiB downloads would not fit in memory).
async fn get(client: &reqwest::Client, url: &str, keep: bool) -> Result<(Duration, Vec<u8>, u64), String> {
    let t = Instant::now();
    let mut response = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let (mut body, mut length) = (Vec::new(), 0u64);
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        length += chunk.len() as u64;
        if keep {
            body.extend_from_slice(&chunk);
        }
    }
    if status != 200 {
        return Err(format!("{status}"));
    }
    Ok((t.elapsed(), body, length))
}

fn word_after<'a>(script: &'a str, prefix: &str) -> Option<&'a str> {
    script.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|rest| rest.split(' ').next())
}

/// One gateway's boot: script, kernel, initrd, secrets; each on a new connection.
async fn boot(
    ca: Arc<Vec<u8>>,
    identity: Vec<u8>,
    source: IpAddr,
    boot_url: String,
    initrd_len: u64,
) -> Result<[Duration; 4], String> {
    let step = |name: &'static str| move |e: String| format!("{name}: {e}");
    let (t_script, script, _) =
        get(&client(&ca, Some(&identity), source), &boot_url, true).await.map_err(step("boot script"))?;
    let script = String::from_utf8_lossy(&script).into_owned();
    let kernel = word_after(&script, "kernel ").ok_or("no kernel line")?.to_string();
    let initrd = word_after(&script, "initrd ").ok_or("no initrd line")?.to_string();
    let start = script.find("b2c.extra_args_url=\"").ok_or("no secrets URL")? + "b2c.extra_args_url=\"".len();
    let secrets = script[start..start + script[start..].find('"').ok_or("bad secrets URL")?].to_string();
    let (t_kernel, _, _) = get(&client(&ca, None, source), &kernel, false).await.map_err(step("kernel"))?;
    let (t_initrd, _, got) = get(&client(&ca, None, source), &initrd, false).await.map_err(step("initrd"))?;
    if got != initrd_len {
        return Err(format!("initrd: {got} of {initrd_len} bytes"));
    }
    let (t_secrets, secret, _) = get(&client(&ca, None, source), &secrets, true).await.map_err(step("secrets"))?;
    if !secret.starts_with(b"gateway=storm-") {
        return Err("wrong secret".into());
    }
    Ok([t_script, t_kernel, t_initrd, t_secrets])
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Starts `serve` sized for the farm, as the README asks: ~63 gateways share each address and
/// all 1,000 download at once, above the defaults (64 per address, 1,024 per listener). For an
/// initrd above 64 MiB the tokens and presigned URLs last 15 minutes: the storm's downloads take
/// minutes, and a gateway fetches its secrets only after its initrd.
fn start_serve(data: &Path, initrd_mib: u64) -> ServeProcess {
    let mut args = vec!["--max-connections-per-client", "128", "--max-connections", "2048"];
    if initrd_mib > 64 {
        args.extend(["--token-ttl", "900", "--presign-ttl", "900"]);
    }
    ServeProcess::start(BIN, data, &args).expect("serve starts")
}

#[tokio::main]
async fn main() {
    let only: Option<u64> = std::env::var("STORM_INITRD_MIB").ok().map(|v| v.parse().expect("STORM_INITRD_MIB: MiB"));
    let data = temp_dir("bench-storm");
    let serve = start_serve(&data, 0);
    let enrolling = Instant::now();
    let identities = enroll(&data, GATEWAYS);
    println!("enrolled {GATEWAYS} gateways in {:.0} s", enrolling.elapsed().as_secs_f64());
    drop(serve);
    let assets = data.with_extension("assets");
    std::fs::create_dir_all(&assets).unwrap();
    for initrd_mib in only.map_or(vec![8, 256], |mib| vec![mib]) {
        storm(&data, &assets, &identities, initrd_mib).await;
    }
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&assets);
}

/// A release with a 2 MiB kernel and an `initrd_mib` MiB initrd, promoted; then every gateway
/// boots at once against a `serve` started for this storm (its peak RSS is this storm's).
async fn storm(data: &Path, assets: &Path, identities: &[Vec<u8>], initrd_mib: u64) {
    let release = format!("storm-{initrd_mib}m");
    let (kernel, initrd) = (assets.join("vmlinuz"), assets.join(format!("initrd-{initrd_mib}m")));
    std::fs::write(&kernel, vec![7u8; 2 << 20]).unwrap();
    // Varied bytes: a page of one value would flatter nothing here, but real initrds are not runs.
    let initrd_len = initrd_mib << 20;
    let content: Vec<u8> = (0..initrd_len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&initrd, &content).unwrap();
    drop(content);
    edge(
        data,
        &[
            "release",
            "create",
            &release,
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0",
        ],
    );
    edge(data, &["channel", "promote", "stable", &release]);
    let serve = start_serve(data, initrd_mib);
    let ca = Arc::new(std::fs::read(data.join("pki/ca.crt")).unwrap());
    let boot_url = format!("{}?buildarch=x86_64&platform=efi", serve.boot_url());
    let started = Instant::now();
    let tasks: Vec<_> = identities
        .iter()
        .enumerate()
        .map(|(i, identity)| {
            let source: IpAddr = format!("127.0.1.{}", 1 + i % 16).parse().unwrap();
            tokio::spawn(boot(ca.clone(), identity.clone(), source, boot_url.clone(), initrd_len))
        })
        .collect();
    let mut steps: [Vec<Duration>; 4] = Default::default();
    let mut errors = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(times) => {
                for (all, t) in steps.iter_mut().zip(times) {
                    all.push(t);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let total = started.elapsed();
    let rss = peak_rss_mb(serve.child.id());
    let booted = steps[2].len() as u64;
    println!(
        "\n{GATEWAYS} gateways booting at once, {initrd_mib} MiB initrd: {:.1} s for all, {} errors, \
         serve peak RSS {rss:.1} MB, {:.0} MB/s of initrds in all",
        total.as_secs_f64(),
        errors.len(),
        (booted * initrd_len) as f64 / total.as_secs_f64() / 1e6
    );
    println!("| step              | n    | p50 (ms) | p99 (ms) |");
    println!("|-------------------|------|----------|----------|");
    let initrd_step = format!("initrd {initrd_mib} MiB");
    for (name, all) in ["boot script", "kernel 2 MiB", &initrd_step, "secrets"].iter().zip(steps.iter_mut()) {
        all.sort();
        if all.is_empty() {
            continue;
        }
        let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
        println!("| {name:<17} | {:>4} | {:>8.1} | {:>8.1} |", all.len(), at(0.5), at(0.99));
    }
    if !steps[2].is_empty() {
        // Per gateway: its initrd's bytes over the time its download took (slowest first).
        let rate = |t: &Duration| initrd_len as f64 / t.as_secs_f64() / 1e6;
        let all = &steps[2];
        println!(
            "initrd per gateway (MB/s): median {:.1}, slowest 1 % {:.1}, slowest {:.1}",
            rate(&all[all.len() / 2]),
            rate(&all[((all.len() - 1) as f64 * 0.99).round() as usize]),
            rate(&all[all.len() - 1])
        );
    }
    if !errors.is_empty() {
        // Without the URLs: they hold tokens and signatures.
        let kinds: std::collections::BTreeMap<String, usize> =
            errors.iter().fold(Default::default(), |mut kinds, e| {
                *kinds.entry(e.split(" for url").next().unwrap_or(e).to_string()).or_default() += 1;
                kinds
            });
        println!("errors by kind: {kinds:?}");
    }
    drop(serve);
}
