//! DynamoDB as the used-token ledger.
//!
//! Table design (one table, generic keys, so other record kinds can share it without a
//! migration): partition key `pk` (S), sort key `sk` (S), TTL attribute `expires_at` (N, epoch
//! seconds). A used token is `pk = "token#<id hex>"`, `sk = "used"`, with `fingerprint` and
//! `used_at`. Per-gateway records are meant to live under `pk = "gateway#<fingerprint>"`
//! (e.g. `sk = "boot#<time>"`, `sk = "last-good"`).

use crate::storage::{LedgerOutcome, StoreError, TokenLedger};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

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
    async fn record_use(&self, token_id: &str, fingerprint: &str, now: u64, expires_at: u64) -> Result<LedgerOutcome, StoreError> {
        let pk = token_pk(token_id);
        let nonce = format!("{:016x}", rand::random::<u64>());
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PARTITION_KEY, AttributeValue::S(pk.clone()))
            .item(SORT_KEY, AttributeValue::S("used".into()))
            .item("fingerprint", AttributeValue::S(fingerprint.to_string()))
            .item("used_at", AttributeValue::N(now.to_string()))
            .item(NONCE_ATTRIBUTE, AttributeValue::S(nonce.clone()))
            .item(TTL_ATTRIBUTE, AttributeValue::N((expires_at + RETENTION_AFTER_EXPIRY_SECS).to_string()))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(LedgerOutcome::Recorded),
            Err(SdkError::ServiceError(e)) if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) => {
                let ours = match e.err() {
                    PutItemError::ConditionalCheckFailedException(c) => {
                        c.item().and_then(|i| i.get(NONCE_ATTRIBUTE)).and_then(|v| v.as_s().ok()) == Some(&nonce)
                    }
                    _ => false,
                };
                Ok(if ours { LedgerOutcome::Recorded } else { LedgerOutcome::AlreadyUsed })
            }
            Err(e) => {
                let error = StoreError::Unavailable(format!("DynamoDB PutItem: {}", DisplayErrorContext(&e)));
                self.forget_if_ours(&pk, &nonce).await;
                Err(error)
            }
        }
    }
}

impl DynamoLedger {
    /// Removes the entry if this call wrote it (best effort: if this fails too, the token stays
    /// spent, the documented at-most-once cost).
    async fn forget_if_ours(&self, pk: &str, nonce: &str) {
        let removed = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(pk.to_string()))
            .key(SORT_KEY, AttributeValue::S("used".into()))
            .condition_expression("#nonce = :nonce")
            .expression_attribute_names("#nonce", NONCE_ATTRIBUTE)
            .expression_attribute_values(":nonce", AttributeValue::S(nonce.to_string()))
            .send()
            .await;
        match removed {
            Ok(_) => tracing::warn!(outcome = "ledger_rolled_back", "an uncertain ledger write was ours and is undone; the token stays redeemable"),
            Err(SdkError::ServiceError(e)) if matches!(e.err(), DeleteItemError::ConditionalCheckFailedException(_)) => {}
            Err(e) => tracing::error!(error = %DisplayErrorContext(&e), "could not undo an uncertain ledger write; the token may be spent"),
        }
    }
}
