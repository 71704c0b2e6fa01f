//! Scratch keys as IAM users, against moto's IAM and S3: users under the dedicated path with
//! the permissions boundary and the prefix-limited policy, key rotation within IAM's two-key
//! limit, revocation, usage, and the whole redemption through the service. (moto does not
//! enforce IAM policies on its S3, so what a key may do is checked on `serve`'s endpoint and
//! by reading the policy here.)

use ipxe_edge_core::domain::token::{Grant, Keyring};
use ipxe_edge_core::service::redeem::{RedeemError, RedeemService};
use ipxe_edge_core::storage::adapters::iam::{user_name, IamScratch, ScratchSettings, DEFAULT_USER_PATH};
use ipxe_edge_core::storage::adapters::memory::{MemoryLedger, MemoryStore};
use ipxe_edge_core::storage::records::Records;
use ipxe_edge_core::storage::ScratchKeys;
use ipxe_edge_tests::fault::FaultProxy;
use ipxe_edge_tests::*;
use std::sync::Arc;

struct Moto {
    /// Between the IAM client and moto, to see the calls.
    proxy: FaultProxy,
    iam: aws_sdk_iam::Client,
    s3: aws_sdk_s3::Client,
    settings: ScratchSettings,
}

async fn moto(test: &str) -> Option<Moto> {
    let env = moto_env(test)?;
    let config = sdk_config(&env).await;
    let proxy = FaultProxy::start(&env.endpoint).await;
    let proxied = ServerEnv {
        endpoint: proxy.endpoint.clone(),
        access_key: env.access_key.clone(),
        secret_key: env.secret_key.clone(),
    };
    let iam = aws_sdk_iam::Client::new(&sdk_config(&proxied).await);
    let s3 = ipxe_edge_core::lambda::init::s3_client(&config, true);
    let bucket = unique_name("scratch").to_lowercase();
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let boundary = iam
        .create_policy()
        .policy_name(unique_name("boundary"))
        .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#)
        .send()
        .await
        .unwrap();
    let settings = ScratchSettings {
        bucket,
        boundary_arn: boundary.policy().unwrap().arn().unwrap().to_string(),
        user_path: DEFAULT_USER_PATH.into(),
        endpoint: env.endpoint.clone(),
        partition: "arn:aws".into(),
    };
    Some(Moto { proxy, iam, s3, settings })
}

fn form_fields(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8().unwrap().into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

impl Moto {
    fn scratch(&self) -> IamScratch {
        IamScratch::new(self.iam.clone(), self.s3.clone(), self.settings.clone())
    }
}

#[tokio::test]
async fn users_carry_the_boundary_and_a_policy_limited_to_their_prefix() {
    let Some(m) = moto("iam users").await else { return };
    let scratch = m.scratch();
    let gateway = unique_name("gw");
    let key = scratch.mint(&gateway, 1_000).await.unwrap();
    assert_eq!(key.bucket_name, format!("{}/{gateway}", m.settings.bucket));
    assert_eq!(key.endpoint, m.settings.endpoint);

    let user = m.iam.get_user().user_name(user_name(&gateway)).send().await.unwrap();
    assert_eq!(user.user().unwrap().path(), DEFAULT_USER_PATH);
    // moto keeps no permissions boundary on users: read the CreateUser call itself.
    let create_user =
        m.proxy.bodies().into_iter().find(|b| b.starts_with("Action=CreateUser&")).expect("a CreateUser call");
    let fields: Vec<(String, String)> = form_fields(&create_user);
    assert!(fields.contains(&("PermissionsBoundary".into(), m.settings.boundary_arn.clone())), "{create_user}");
    assert!(fields.contains(&("Path".into(), DEFAULT_USER_PATH.into())), "{create_user}");
    let policy =
        m.iam.get_user_policy().user_name(user_name(&gateway)).policy_name("scratch-space").send().await.unwrap();
    let document = percent_encoding::percent_decode_str(policy.policy_document()).decode_utf8().unwrap().to_string();
    let document: serde_json::Value = serde_json::from_str(&document).unwrap();
    assert_eq!(document, serde_json::from_str::<serde_json::Value>(&scratch.policy(&gateway)).unwrap());
    let text = document.to_string();
    assert!(text.contains(&format!("arn:aws:s3:::{}/{gateway}/*", m.settings.bucket)), "{text}");
    assert!(!text.contains("\"s3:*\"") && !text.contains("\"*\""), "no wildcard action or resource: {text}");
}

#[tokio::test]
async fn keys_rotate_within_iams_limit_and_are_revoked() {
    let Some(m) = moto("iam rotation").await else { return };
    let scratch = m.scratch();
    let gateway = unique_name("gw");
    let first = scratch.mint(&gateway, 1).await.unwrap();
    let second = scratch.mint(&gateway, 2).await.unwrap();
    let live: Vec<String> = scratch.keys(&gateway).await.unwrap().into_iter().map(|k| k.access_key_id).collect();
    assert_eq!(live.len(), 2);
    assert!(live.contains(&first.access_key_id) && live.contains(&second.access_key_id));
    assert_eq!(scratch.revoke_older(&gateway, &second.access_key_id).await.unwrap(), 1);
    assert_eq!(
        scratch.keys(&gateway).await.unwrap().iter().map(|k| &k.access_key_id).collect::<Vec<_>>(),
        vec![&second.access_key_id]
    );
    // Redemptions that never revoked (crashes) do not hit IAM's two-key limit.
    for at in 3..6 {
        scratch.mint(&gateway, at).await.expect("room is made");
    }
    assert!(scratch.keys(&gateway).await.unwrap().len() <= 2);
    let newest = scratch.mint(&gateway, 6).await.unwrap();
    scratch.revoke(&gateway, &newest.access_key_id).await.unwrap();
    assert!(!scratch.keys(&gateway).await.unwrap().iter().any(|k| k.access_key_id == newest.access_key_id));
    scratch.revoke_all(&gateway).await.unwrap();
    assert!(scratch.keys(&gateway).await.unwrap().is_empty());
    assert!(scratch.keys("never-minted").await.unwrap().is_empty(), "no user, no keys");
}

#[tokio::test]
async fn usage_counts_the_gateways_prefix_only() {
    let Some(m) = moto("iam usage").await else { return };
    for (key, body) in [("gw-a/x", &b"12345"[..]), ("gw-a/d/y", b"123"), ("gw-ab/z", b"1"), ("gw-b/z", b"1")] {
        m.s3.put_object().bucket(&m.settings.bucket).key(key).body(body.to_vec().into()).send().await.unwrap();
    }
    let usage = m.scratch().usage("gw-a").await.unwrap();
    assert_eq!((usage.objects, usage.bytes), (2, 8));
}

#[tokio::test]
async fn redemption_mints_an_iam_key_and_revokes_the_previous_one() {
    let Some(m) = moto("iam redemption").await else { return };
    let store = Arc::new(MemoryStore::new());
    let gw = issue_gateway("iam-gw");
    let gateway = unique_name("iam-gw");
    let secret = b"b2c.minio=\"bbz,${s3_endpoint},${s3_access_key_id},${s3_access_key}\" mirror=bbz/${s3_bucket_name}";
    let seeded = seed_gateway(
        store.as_ref(),
        &gateway,
        &gw.cert_der,
        SeedRelease { id: "r1", kernel: b"K", initrd: b"I", cmdline: "" },
        Some(secret),
    )
    .await;
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let scratch = Arc::new(m.scratch());
    let service = RedeemService::new(Records::new(store), Arc::new(MemoryLedger::default()), keyring.clone())
        .with_scratch(scratch.clone());
    let token = || keyring.mint(&seeded.fingerprint, &Grant::Secrets, 2_000_000_000).unwrap().1;

    let first_token = token();
    let first = String::from_utf8(service.redeem(&first_token, 1_900_000_000).await.unwrap().secret).unwrap();
    let live = scratch.keys(&gateway).await.unwrap();
    assert_eq!(live.len(), 1);
    assert!(first.contains(&format!(",{},", live[0].access_key_id)), "{first}");
    assert!(first.ends_with(&format!("mirror=bbz/{}/{gateway}", m.settings.bucket)), "{first}");

    let second = String::from_utf8(service.redeem(&token(), 1_900_000_060).await.unwrap().secret).unwrap();
    let now_live = scratch.keys(&gateway).await.unwrap();
    assert_eq!(now_live.len(), 1, "the previous key was deleted");
    assert_ne!(now_live[0].access_key_id, live[0].access_key_id);
    assert!(second.contains(&now_live[0].access_key_id));

    assert!(matches!(service.redeem(&first_token, 1_900_000_100).await, Err(RedeemError::Replayed(_))));
    assert_eq!(scratch.keys(&gateway).await.unwrap(), now_live, "a replay mints nothing");
}
