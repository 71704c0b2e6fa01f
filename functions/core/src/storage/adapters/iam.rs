//! Scratch keys on AWS: one IAM user per gateway under a dedicated path, created with the
//! deployment's permissions boundary and an inline policy limited to the gateway's prefix of the
//! scratch bucket. Each mint creates an access key; the older ones are deleted once it was
//! delivered. The boundary caps what any minted key can ever do, whatever the inline policy
//! says, and the redeem function may only create users that carry it (see
//! `docs/security-model.md`).

use crate::storage::{ScratchKey, ScratchKeyInfo, ScratchKeys, ScratchUsage, StoreError};
use async_trait::async_trait;
use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use sha2::{Digest, Sha256};

/// Where the scratch space and its users are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchSettings {
    /// `SCRATCH_BUCKET`.
    pub bucket: String,
    /// `SCRATCH_BOUNDARY_ARN`: the managed policy every scratch user is created with.
    pub boundary_arn: String,
    /// `SCRATCH_USER_PATH` (`/ipxe-edge/scratch/`).
    pub user_path: String,
    /// `SCRATCH_ENDPOINT`: `${s3_endpoint}` (`https://s3.<region>.amazonaws.com`).
    pub endpoint: String,
    /// `arn:<partition>`, for the policy's resources.
    pub partition: String,
}

pub const DEFAULT_USER_PATH: &str = "/ipxe-edge/scratch/";

pub struct IamScratch {
    iam: aws_sdk_iam::Client,
    s3: aws_sdk_s3::Client,
    settings: ScratchSettings,
    /// For each key this process minted, the gateway's keys that existed just before it: the
    /// ones its delivery revokes. IAM dates keys to the second, too coarse to order two
    /// redemptions of one boot loop.
    older: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
}

fn unavailable<E: std::error::Error + 'static, R: std::fmt::Debug>(what: &str, e: SdkError<E, R>) -> StoreError {
    StoreError::Unavailable(format!("IAM {what}: {}", DisplayErrorContext(&e)))
}

fn no_such_entity<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(s) if s.err().code() == Some("NoSuchEntity"))
}

/// The IAM user of a gateway: `ies-<name>` (IAM names are at most 64 characters; longer
/// gateway names are shortened with a hash of the whole name).
pub fn user_name(gateway: &str) -> String {
    if gateway.len() <= 60 {
        format!("ies-{gateway}")
    } else {
        let hash = hex::encode(&Sha256::digest(gateway.as_bytes())[..8]);
        format!("ies-{}-{hash}", &gateway[..43])
    }
}

impl IamScratch {
    pub fn new(iam: aws_sdk_iam::Client, s3: aws_sdk_s3::Client, settings: ScratchSettings) -> Self {
        IamScratch { iam, s3, settings, older: Default::default() }
    }

    /// List, read, write and delete under `<gateway>/` of the scratch bucket, nothing else.
    pub fn policy(&self, gateway: &str) -> String {
        let bucket = format!("{}:s3:::{}", self.settings.partition, self.settings.bucket);
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ListOwnPrefix",
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": bucket,
                    // Only prefixes inside `<gateway>/`: the bare name would list `<gateway>0/…` too.
                    "Condition": {"StringLike": {"s3:prefix": [format!("{gateway}/*")]}}
                },
                {"Sid": "LocateBucket", "Effect": "Allow", "Action": "s3:GetBucketLocation", "Resource": bucket},
                {
                    "Sid": "OwnObjects",
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                    "Resource": format!("{bucket}/{gateway}/*")
                }
            ]
        })
        .to_string()
    }

    /// Creates the gateway's user with the boundary if it does not exist yet, and (re)writes its
    /// policy. No `GetUser` first: for a user that does not exist IAM checks that call against
    /// an ARN without the path, which the function's path-limited rights do not cover. A name
    /// taken by another deployment (another path) fails at the next call, which the function
    /// may not make on that user.
    async fn ensure_user(&self, gateway: &str) -> Result<String, StoreError> {
        let user = user_name(gateway);
        let tag = aws_sdk_iam::types::Tag::builder()
            .key("ipxe-edge-gateway")
            .value(gateway)
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let created = self
            .iam
            .create_user()
            .user_name(&user)
            .path(&self.settings.user_path)
            .permissions_boundary(&self.settings.boundary_arn)
            .tags(tag)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(SdkError::ServiceError(s)) if s.err().code() == Some("EntityAlreadyExists") => {}
            Err(e) => return Err(unavailable("CreateUser", e)),
        }
        // Idempotent; also repairs a user whose first policy write failed.
        self.iam
            .put_user_policy()
            .user_name(&user)
            .policy_name("scratch-space")
            .policy_document(self.policy(gateway))
            .send()
            .await
            .map_err(|e| unavailable("PutUserPolicy", e))?;
        Ok(user)
    }

    async fn list(&self, user: &str) -> Result<Vec<ScratchKeyInfo>, StoreError> {
        let listed = match self.iam.list_access_keys().user_name(user).send().await {
            Ok(listed) => listed,
            Err(e) if no_such_entity(&e) => return Ok(Vec::new()),
            Err(e) => return Err(unavailable("ListAccessKeys", e)),
        };
        let mut keys: Vec<ScratchKeyInfo> = listed
            .access_key_metadata()
            .iter()
            .filter_map(|k| {
                Some(ScratchKeyInfo {
                    access_key_id: k.access_key_id()?.to_string(),
                    minted_at: k.create_date().map(|d| d.secs().max(0) as u64).unwrap_or(0),
                })
            })
            .collect();
        keys.sort_by(|a, b| (a.minted_at, &a.access_key_id).cmp(&(b.minted_at, &b.access_key_id)));
        Ok(keys)
    }

    async fn delete_key(&self, user: &str, id: &str) -> Result<(), StoreError> {
        match self.iam.delete_access_key().user_name(user).access_key_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if no_such_entity(&e) => Ok(()),
            Err(e) => Err(unavailable("DeleteAccessKey", e)),
        }
    }
}

#[async_trait]
impl ScratchKeys for IamScratch {
    async fn mint(&self, gateway: &str, now: u64) -> Result<ScratchKey, StoreError> {
        let user = self.ensure_user(gateway).await?;
        // IAM allows two keys per user: make room by deleting the oldest, which the previous
        // redemption would have revoked had it finished.
        let mut live = self.list(&user).await?;
        if live.len() >= 2 {
            self.delete_key(&user, &live[0].access_key_id).await?;
            live.remove(0);
        }
        let created = self
            .iam
            .create_access_key()
            .user_name(&user)
            .send()
            .await
            .map_err(|e| unavailable("CreateAccessKey", e))?;
        let key = created
            .access_key()
            .ok_or_else(|| StoreError::Unavailable("IAM CreateAccessKey returned no key".into()))?;
        let before = live.into_iter().map(|k| k.access_key_id).collect();
        self.older.lock().unwrap_or_else(|p| p.into_inner()).insert(key.access_key_id().to_string(), before);
        Ok(ScratchKey {
            access_key_id: key.access_key_id().to_string(),
            secret_access_key: key.secret_access_key().to_string(),
            endpoint: self.settings.endpoint.clone(),
            bucket_name: format!("{}/{gateway}", self.settings.bucket),
            minted_at: now,
        })
    }

    async fn revoke_older(&self, gateway: &str, keep: &str) -> Result<usize, StoreError> {
        let user = user_name(gateway);
        let live = self.list(&user).await?;
        let Some(kept) = live.iter().find(|k| k.access_key_id == keep) else { return Ok(0) };
        // The keys that existed when this one was minted; for a key another process minted,
        // those created in an earlier second (a tie is left for the next redemption).
        let known = self.older.lock().unwrap_or_else(|p| p.into_inner()).remove(keep);
        let older: Vec<&ScratchKeyInfo> = match &known {
            Some(before) => live.iter().filter(|k| before.contains(&k.access_key_id)).collect(),
            None => live.iter().filter(|k| k.minted_at < kept.minted_at).collect(),
        };
        for key in &older {
            self.delete_key(&user, &key.access_key_id).await?;
        }
        Ok(older.len())
    }

    async fn revoke_all(&self, gateway: &str) -> Result<usize, StoreError> {
        let user = user_name(gateway);
        let live = self.list(&user).await?;
        for key in &live {
            self.delete_key(&user, &key.access_key_id).await?;
        }
        Ok(live.len())
    }

    async fn set_suspended(&self, gateway: &str, suspended: bool) -> Result<usize, StoreError> {
        let user = user_name(gateway);
        let status =
            if suspended { aws_sdk_iam::types::StatusType::Inactive } else { aws_sdk_iam::types::StatusType::Active };
        let live = self.list(&user).await?;
        for key in &live {
            match self
                .iam
                .update_access_key()
                .user_name(&user)
                .access_key_id(&key.access_key_id)
                .status(status.clone())
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if no_such_entity(&e) => {}
                Err(e) => return Err(unavailable("UpdateAccessKey", e)),
            }
        }
        Ok(live.len())
    }

    async fn revoke(&self, gateway: &str, access_key_id: &str) -> Result<(), StoreError> {
        self.older.lock().unwrap_or_else(|p| p.into_inner()).remove(access_key_id);
        self.delete_key(&user_name(gateway), access_key_id).await
    }

    async fn keys(&self, gateway: &str) -> Result<Vec<ScratchKeyInfo>, StoreError> {
        self.list(&user_name(gateway)).await
    }

    async fn usage(&self, gateway: &str) -> Result<ScratchUsage, StoreError> {
        let mut usage = ScratchUsage::default();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.settings.bucket)
            .prefix(format!("{gateway}/"))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                StoreError::Unavailable(format!("S3 ListObjectsV2: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))
            })?;
            for object in page.contents() {
                usage.objects += 1;
                usage.bytes += object.size().unwrap_or(0).max(0) as u64;
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IAM's `StringLike`: `*` any run of characters, `?` one character.
    fn string_like(pattern: &str, value: &str) -> bool {
        match (pattern.chars().next(), value.chars().next()) {
            (None, None) => true,
            (Some('*'), _) => {
                string_like(&pattern[1..], value)
                    || (!value.is_empty() && string_like(pattern, &value[value.chars().next().unwrap().len_utf8()..]))
            }
            (Some('?'), Some(v)) => string_like(&pattern[1..], &value[v.len_utf8()..]),
            (Some(p), Some(v)) if p == v => string_like(&pattern[p.len_utf8()..], &value[v.len_utf8()..]),
            _ => false,
        }
    }

    #[test]
    fn a_gateway_lists_only_below_its_own_slash() {
        let config = aws_sdk_iam::Config::builder()
            .behavior_version(aws_sdk_iam::config::BehaviorVersion::latest())
            .region(aws_sdk_iam::config::Region::new("us-east-1"))
            .build();
        let s3 = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build();
        let settings = ScratchSettings {
            bucket: "scratch".into(),
            boundary_arn: "arn:aws:iam::1:policy/b".into(),
            user_path: DEFAULT_USER_PATH.into(),
            endpoint: String::new(),
            partition: "arn:aws".into(),
        };
        let scratch =
            IamScratch::new(aws_sdk_iam::Client::from_conf(config), aws_sdk_s3::Client::from_conf(s3), settings);
        let policy: serde_json::Value = serde_json::from_str(&scratch.policy("gw-1")).unwrap();
        let list = policy["Statement"].as_array().unwrap().iter().find(|s| s["Action"] == "s3:ListBucket").unwrap();
        let patterns: Vec<&str> = list["Condition"]["StringLike"]["s3:prefix"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let allowed = |prefix: &str| patterns.iter().any(|p| string_like(p, prefix));
        assert!(allowed("gw-1/") && allowed("gw-1/state/"), "{patterns:?}");
        for neighbour in ["gw-1", "gw-", "", "gw-10", "gw-10/", "gw-10/state/", "gw-2/"] {
            assert!(!allowed(neighbour), "gw-1 may list {neighbour:?}: {patterns:?}");
        }
        let objects = policy["Statement"].as_array().unwrap().iter().find(|s| s["Sid"] == "OwnObjects").unwrap();
        assert_eq!(objects["Resource"], "arn:aws:s3:::scratch/gw-1/*");
        assert!(!string_like(objects["Resource"].as_str().unwrap(), "arn:aws:s3:::scratch/gw-10/x"));
    }

    #[test]
    fn user_names_fit_iam() {
        assert_eq!(user_name("gw-1"), "ies-gw-1");
        let long = "g".repeat(64);
        let name = user_name(&long);
        assert!(name.len() <= 64, "{}", name.len());
        assert_ne!(name, user_name(&format!("{}h", "g".repeat(63))));
    }
}
