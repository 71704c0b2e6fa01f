//! DynamoDB as the used-token ledger and the boot journal.
//!
//! Table design (one table, generic keys, so other record kinds can share it without a
//! migration): partition key `pk` (S), sort key `sk` (S), TTL attribute `expires_at` (N, epoch
//! seconds). A used token is `pk = "token#<id hex>"`, `sk = "used"`, with `fingerprint` and
//! `used_at`. Per-gateway records live under `pk = "gateway#<fingerprint>"`: `sk = "state"` (the
//! boot state as JSON in `health`, and its `version`), `sk = "last-good"` (`release`, `boot`,
//! `at`) and `sk = "boot#<issued_at, 10 digits>#<seq, 10 digits>#<boot id>"` (the boot as JSON in `record`, with
//! `release` and `outcome` readable, expiring after the retention).

use crate::domain::identity::Fingerprint;
use crate::domain::journal::{BootRecord, GatewayJournal, LastGood};
use crate::storage::{BootJournal, LedgerOutcome, StoreError, StoredJournal, TokenLedger, TokenUse, UseCommit};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;
use std::time::Duration;

pub const PARTITION_KEY: &str = "pk";
pub const SORT_KEY: &str = "sk";
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// A random tag of the call that wrote a used-token entry, to recognise our own retried writes.
pub const NONCE_ATTRIBUTE: &str = "nonce";

/// How long after its expiry a used-token entry is kept (replays of old tokens are refused as
/// expired anyway; the margin keeps the audit trail for a day).
const RETENTION_AFTER_EXPIRY_SECS: u64 = 86_400;

#[derive(Clone, Debug)]
pub struct DynamoLedger {
    client: Client,
    table: String,
}

impl DynamoLedger {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoLedger { client, table: table.into() }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

pub fn token_pk(token_id: &str) -> String {
    format!("token#{token_id}")
}

#[async_trait]
impl TokenLedger for DynamoLedger {
    /// One conditional put, tagged with a nonce of this call. When the put's answer is lost (a
    /// reset, a timeout) the SDK retries it; finding an entry that carries our own nonce then
    /// means our first attempt landed: recorded, not a replay. When the outcome stays unknown,
    /// the entry is removed again if it is ours, so that a failed redemption does not spend
    /// the token.
    async fn record_use(
        &self,
        token_id: &str,
        fingerprint: &str,
        now: u64,
        expires_at: u64,
    ) -> Result<LedgerOutcome, StoreError> {
        let token = TokenUse { token_id, fingerprint, used_at: now, expires_at };
        let nonce = new_nonce();
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(used_token_item(&token, &nonce)))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(LedgerOutcome::Recorded),
            Err(SdkError::ServiceError(e)) if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) => {
                let ours = match e.err() {
                    PutItemError::ConditionalCheckFailedException(c) => carries_nonce(c.item(), &nonce),
                    _ => false,
                };
                Ok(if ours { LedgerOutcome::Recorded } else { LedgerOutcome::AlreadyUsed })
            }
            Err(e) => {
                let error = StoreError::Unavailable(format!("DynamoDB PutItem: {}", DisplayErrorContext(&e)));
                forget_use_if_ours(&self.client, &self.table, token_id, &nonce).await;
                Err(error)
            }
        }
    }

    async fn is_used(&self, token_id: &str) -> Result<bool, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(token_pk(token_id)))
            .key(SORT_KEY, AttributeValue::S("used".into()))
            .consistent_read(true)
            .projection_expression("#pk")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(format!("DynamoDB GetItem: {}", DisplayErrorContext(&e))))?;
        Ok(item.item().is_some())
    }
}

fn new_nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The used-token entry, tagged with the writing call's `nonce`.
fn used_token_item(token: &TokenUse<'_>, nonce: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (PARTITION_KEY.to_string(), AttributeValue::S(token_pk(token.token_id))),
        (SORT_KEY.to_string(), AttributeValue::S("used".into())),
        ("fingerprint".to_string(), AttributeValue::S(token.fingerprint.to_string())),
        ("used_at".to_string(), AttributeValue::N(token.used_at.to_string())),
        (NONCE_ATTRIBUTE.to_string(), AttributeValue::S(nonce.to_string())),
        (TTL_ATTRIBUTE.to_string(), AttributeValue::N((token.expires_at + RETENTION_AFTER_EXPIRY_SECS).to_string())),
    ])
}

/// Whether an entry a failed condition returned was written by the call tagged `nonce`.
fn carries_nonce(item: Option<&HashMap<String, AttributeValue>>, nonce: &str) -> bool {
    item.and_then(|i| i.get(NONCE_ATTRIBUTE)).and_then(|v| v.as_s().ok()).map(String::as_str) == Some(nonce)
}

/// Removes a used-token entry if the call tagged `nonce` wrote it (best effort: if this fails
/// too, the token stays spent, the documented at-most-once cost).
async fn forget_use_if_ours(client: &Client, table: &str, token_id: &str, nonce: &str) {
    let removed = client
        .delete_item()
        .table_name(table)
        .key(PARTITION_KEY, AttributeValue::S(token_pk(token_id)))
        .key(SORT_KEY, AttributeValue::S("used".into()))
        .condition_expression("#nonce = :nonce")
        .expression_attribute_names("#nonce", NONCE_ATTRIBUTE)
        .expression_attribute_values(":nonce", AttributeValue::S(nonce.to_string()))
        .send()
        .await;
    match removed {
        Ok(_) => tracing::warn!(
            outcome = "ledger_rolled_back",
            "an uncertain ledger write was ours and is undone; the token stays redeemable"
        ),
        Err(SdkError::ServiceError(e)) if matches!(e.err(), DeleteItemError::ConditionalCheckFailedException(_)) => {}
        Err(e) => {
            tracing::error!(error = %DisplayErrorContext(&e), "could not undo an uncertain ledger write; the token may be spent")
        }
    }
}

pub fn gateway_pk(fp: &Fingerprint) -> String {
    format!("gateway#{fp}")
}

const STATE_SK: &str = "state";
const LAST_GOOD_SK: &str = "last-good";
const BOOT_SK_PREFIX: &str = "boot#";
/// Default time boot records are kept.
pub const DEFAULT_BOOT_RETENTION: Duration = Duration::from_secs(90 * 86_400);

/// The boot journal in the DynamoDB table, beside the used tokens.
#[derive(Clone, Debug)]
pub struct DynamoJournal {
    client: Client,
    table: String,
    retention: Duration,
    /// The service's ledger is this table: [`BootJournal::commit_with_use`] writes both.
    ledger_beside: bool,
}

impl DynamoJournal {
    pub fn new(client: Client, table: impl Into<String>, retention: Duration) -> Self {
        DynamoJournal { client, table: table.into(), retention, ledger_beside: false }
    }

    /// The journal of a service whose used tokens `ledger` records: when it is this table, a
    /// redemption records its token and its boot state in one transaction.
    pub fn with_ledger(mut self, ledger: &DynamoLedger) -> Self {
        self.ledger_beside = ledger.table == self.table;
        self
    }
}

/// How a journal transaction ended.
enum Transaction {
    Written,
    /// A condition failed: the reasons, in the order of the items.
    Cancelled(Vec<aws_sdk_dynamodb::types::CancellationReason>),
}

fn unavailable(what: &str, e: impl std::error::Error) -> StoreError {
    StoreError::Unavailable(format!("DynamoDB {what}: {}", DisplayErrorContext(e)))
}

fn attr_s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn attr_n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok())
}

fn bad_item(pk: &str, sk: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("DynamoDB item {pk}/{sk} is not valid: {why}"))
}

impl DynamoJournal {
    /// The state (conditional on its version), the last-good item and the boot records.
    fn commit_items(
        &self,
        fp: &Fingerprint,
        version: Option<&str>,
        next: &GatewayJournal,
        boots: &[&BootRecord],
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let pk = gateway_pk(fp);
        let key_attr =
            |sk: &str| [(PARTITION_KEY, AttributeValue::S(pk.clone())), (SORT_KEY, AttributeValue::S(sk.to_string()))];
        let build = |put: aws_sdk_dynamodb::types::builders::PutBuilder| -> Result<TransactWriteItem, StoreError> {
            Ok(TransactWriteItem::builder()
                .put(put.table_name(&self.table).build().map_err(|e| unavailable("Put", e))?)
                .build())
        };
        let state_only = GatewayJournal { last_good: None, ..next.clone() };
        let health =
            serde_json::to_string(&state_only).map_err(|e| StoreError::Unavailable(format!("journal state: {e}")))?;
        let next_version = match version {
            None => 1,
            Some(v) => v.parse::<u64>().map_err(|_| StoreError::Conflict(pk.clone()))? + 1,
        };
        let mut state = Put::builder();
        for (name, value) in key_attr(STATE_SK) {
            state = state.item(name, value);
        }
        state = state
            .item("health", AttributeValue::S(health))
            .item("version", AttributeValue::N(next_version.to_string()));
        state = match version {
            None => {
                state.condition_expression("attribute_not_exists(#pk)").expression_attribute_names("#pk", PARTITION_KEY)
            }
            Some(v) => state
                .condition_expression("#version = :version")
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(":version", AttributeValue::N(v.to_string())),
        };
        let mut items = vec![build(state)?];
        if let Some(good) = &next.last_good {
            let mut put = Put::builder();
            for (name, value) in key_attr(LAST_GOOD_SK) {
                put = put.item(name, value);
            }
            put = put
                .item("release", AttributeValue::S(good.release.clone()))
                .item("boot", AttributeValue::S(good.boot.clone()))
                .item("at", AttributeValue::N(good.at.to_string()));
            items.push(build(put)?);
        }
        for boot in boots {
            let record =
                serde_json::to_string(boot).map_err(|e| StoreError::Unavailable(format!("boot record: {e}")))?;
            let mut put = Put::builder();
            for (name, value) in
                key_attr(&format!("{BOOT_SK_PREFIX}{:010}#{:010}#{}", boot.issued_at, boot.seq, boot.id))
            {
                put = put.item(name, value);
            }
            put = put
                .item("record", AttributeValue::S(record))
                .item("release", AttributeValue::S(boot.release.clone()))
                .item("outcome", AttributeValue::S(boot.outcome.as_str().into()))
                .item(TTL_ATTRIBUTE, AttributeValue::N((boot.issued_at + self.retention.as_secs()).to_string()));
            items.push(build(put)?);
        }
        Ok(items)
    }

    /// Writes `items` in one transaction; a failed condition or a conflicting transaction is
    /// [`Transaction::Cancelled`], any other failure unavailable.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Transaction, StoreError> {
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .client_request_token(format!("{:032x}", rand::random::<u128>()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Transaction::Written),
            Err(SdkError::ServiceError(e)) => match e.err() {
                TransactWriteItemsError::TransactionCanceledException(c)
                    if c.cancellation_reasons()
                        .iter()
                        .any(|r| matches!(r.code(), Some("ConditionalCheckFailed") | Some("TransactionConflict"))) =>
                {
                    Ok(Transaction::Cancelled(c.cancellation_reasons().to_vec()))
                }
                other => {
                    Err(StoreError::Unavailable(format!("DynamoDB TransactWriteItems: {}", DisplayErrorContext(other))))
                }
            },
            Err(e) => Err(unavailable("TransactWriteItems", e)),
        }
    }
}

#[async_trait]
impl BootJournal for DynamoJournal {
    /// One strongly consistent query returns both `last-good` and `state` (the sort keys
    /// between them hold nothing else).
    async fn load(&self, fp: &Fingerprint) -> Result<StoredJournal, StoreError> {
        let pk = gateway_pk(fp);
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("#pk = :pk AND #sk BETWEEN :from AND :to")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .expression_attribute_names("#sk", SORT_KEY)
            .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
            .expression_attribute_values(":from", AttributeValue::S(LAST_GOOD_SK.into()))
            .expression_attribute_values(":to", AttributeValue::S(STATE_SK.into()))
            .send()
            .await
            .map_err(|e| unavailable("Query", e))?;
        let mut stored = StoredJournal::default();
        let mut last_good = None;
        for item in output.items() {
            match attr_s(item, SORT_KEY) {
                Some(STATE_SK) => {
                    let json = attr_s(item, "health").ok_or_else(|| bad_item(&pk, STATE_SK, "no health"))?;
                    stored.health = serde_json::from_str(json).map_err(|e| bad_item(&pk, STATE_SK, e))?;
                    stored.version =
                        Some(attr_n(item, "version").ok_or_else(|| bad_item(&pk, STATE_SK, "no version"))?.to_string());
                }
                Some(LAST_GOOD_SK) => {
                    let release = attr_s(item, "release").ok_or_else(|| bad_item(&pk, LAST_GOOD_SK, "no release"))?;
                    last_good = Some(LastGood {
                        release: release.to_string(),
                        boot: attr_s(item, "boot").unwrap_or_default().to_string(),
                        at: attr_n(item, "at").unwrap_or_default(),
                    });
                }
                _ => {}
            }
        }
        stored.health.last_good = last_good;
        Ok(stored)
    }

    /// One transaction: the state (conditional on its version), the last-good item and the
    /// boot records. A client request token makes the SDK's own retries idempotent.
    async fn commit(
        &self,
        fp: &Fingerprint,
        version: Option<&str>,
        next: &GatewayJournal,
        boots: &[&BootRecord],
    ) -> Result<(), StoreError> {
        let items = self.commit_items(fp, version, next, boots)?;
        match self.transact(items).await? {
            Transaction::Written => Ok(()),
            Transaction::Cancelled(_) => Err(StoreError::Conflict(gateway_pk(fp))),
        }
    }

    /// The used-token entry (first, conditional on its absence) and the commit's items in one
    /// transaction. A lost answer is settled as `record_use` settles it: a retry that finds
    /// the entry tagged with this call's nonce landed (and, the transaction being atomic, so
    /// did the state); an outcome still unknown is undone.
    async fn commit_with_use(
        &self,
        fp: &Fingerprint,
        version: Option<&str>,
        next: &GatewayJournal,
        boots: &[&BootRecord],
        token: &TokenUse<'_>,
    ) -> Option<Result<UseCommit, StoreError>> {
        if !self.ledger_beside {
            return None;
        }
        let nonce = new_nonce();
        let written = async {
            let used = Put::builder()
                .table_name(&self.table)
                .set_item(Some(used_token_item(token, &nonce)))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PARTITION_KEY)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .build()
                .map_err(|e| unavailable("Put", e))?;
            let mut items = vec![TransactWriteItem::builder().put(used).build()];
            items.extend(self.commit_items(fp, version, next, boots)?);
            self.transact(items).await
        };
        Some(match written.await {
            Ok(Transaction::Written) => Ok(UseCommit::Recorded),
            Ok(Transaction::Cancelled(reasons)) => {
                let used = reasons.first();
                if used.is_some_and(|r| r.code() == Some("ConditionalCheckFailed")) {
                    Ok(if carries_nonce(used.and_then(|r| r.item()), &nonce) {
                        UseCommit::Recorded
                    } else {
                        UseCommit::AlreadyUsed
                    })
                } else {
                    Ok(UseCommit::StateChanged)
                }
            }
            Err(e) => {
                forget_use_if_ours(&self.client, &self.table, token.token_id, &nonce).await;
                Err(e)
            }
        })
    }

    async fn history(&self, fp: &Fingerprint, limit: usize) -> Result<Vec<BootRecord>, StoreError> {
        let pk = gateway_pk(fp);
        let mut boots = Vec::new();
        let mut start = None;
        while boots.len() < limit {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :boot)")
                .expression_attribute_names("#pk", PARTITION_KEY)
                .expression_attribute_names("#sk", SORT_KEY)
                .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
                .expression_attribute_values(":boot", AttributeValue::S(BOOT_SK_PREFIX.into()))
                .scan_index_forward(false)
                .limit((limit - boots.len()).min(1000) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable("Query", e))?;
            for item in output.items() {
                let sk = attr_s(item, SORT_KEY).unwrap_or_default();
                let json = attr_s(item, "record").ok_or_else(|| bad_item(&pk, sk, "no record"))?;
                boots.push(serde_json::from_str(json).map_err(|e| bad_item(&pk, sk, e))?);
            }
            match output.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        boots.truncate(limit);
        Ok(boots)
    }
}
