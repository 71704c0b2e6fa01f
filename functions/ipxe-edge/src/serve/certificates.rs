//! `serve`'s look at the gateways' certificates, at start and then hourly: the expiry gauges,
//! and with `--auto-renew` a renewal for every gateway whose certificate enters the window.

use super::metrics::ServeMetrics;
use crate::datadir::DataDir;
use crate::ops::renewal::{self, RenewOptions, Standing};
use ipxe_edge_core::domain::clock;
use ipxe_edge_core::domain::model::GatewayState;
use ipxe_edge_core::storage::records::Records;
use std::sync::Arc;
use std::time::Duration;

/// Checks again every `every`, the first time after `every`: [`check`] ran at start, before
/// the listeners were announced, so the gauges are right from the first scrape.
pub async fn watch(
    records: Records,
    dir: DataDir,
    renewals: Option<RenewOptions>,
    window: Duration,
    every: Duration,
    metrics: Arc<ServeMetrics>,
) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        check(&records, &dir, renewals.as_ref(), window, &metrics).await;
    }
}

pub async fn check(
    records: &Records,
    dir: &DataDir,
    renewals: Option<&RenewOptions>,
    window: Duration,
    metrics: &ServeMetrics,
) {
    let now = clock::unix_now();
    let standings = match renewal::standings(records).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "gateway certificates not checked");
            return;
        }
    };
    let live = gauge(metrics, standings, window, now);
    let Some(options) = renewals else { return };
    let due: Vec<_> = live.into_iter().filter(|s| s.expires_within(window, now) && !s.pending).collect();
    if due.is_empty() {
        return;
    }
    let ca = match crate::ops::ca::load(dir) {
        Ok(ca) => ca,
        Err(e) => {
            tracing::error!(error = %e, "no CA to renew gateway certificates with");
            return;
        }
    };
    let mut renewed = 0;
    for standing in &due {
        match renewal::renew(records, dir, &ca, standing, options, now).await {
            // Renewed by an operator command meanwhile.
            Ok(None) => {}
            Ok(Some(done)) => {
                renewed += 1;
                tracing::info!(
                    gateway = %done.gateway, fingerprint = done.fingerprint.as_str(), renews = done.renews.as_str(),
                    not_after = done.not_after, "gateway certificate renewed; staged for the gateway to fetch"
                );
            }
            Err(e) => tracing::error!(gateway = %standing.gateway.name, error = %e, "gateway certificate not renewed"),
        }
    }
    // Gauges again, now that renewals are pending.
    if renewed > 0 {
        if let Ok(after) = renewal::standings(records).await {
            gauge(metrics, after, window, now);
        }
    }
}

/// Sets the certificate gauges from the gateways' standings; returns those not revoked.
fn gauge(metrics: &ServeMetrics, standings: Vec<Standing>, window: Duration, now: u64) -> Vec<Standing> {
    let live: Vec<_> = standings.into_iter().filter(|s| s.gateway.state != GatewayState::Revoked).collect();
    let expiring = live.iter().filter(|s| s.expires_within(window, now) && !s.pending).count();
    metrics.set_certificates(expiring as i64, live.iter().filter_map(|s| s.days_left(now)).min());
    live
}
