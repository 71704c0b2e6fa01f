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
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

pub const PARTITION_KEY: &str = "pk";
pub const SORT_KEY: &str = "sk";
pub const TTL_ATTRIBUTE: &str = "expires_at";

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
    async fn record_use(&self, token_id: &str, fingerprint: &str, now: u64, expires_at: u64) -> Result<LedgerOutcome, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PARTITION_KEY, AttributeValue::S(token_pk(token_id)))
            .item(SORT_KEY, AttributeValue::S("used".into()))
            .item("fingerprint", AttributeValue::S(fingerprint.to_string()))
            .item("used_at", AttributeValue::N(now.to_string()))
            .item(TTL_ATTRIBUTE, AttributeValue::N((expires_at + RETENTION_AFTER_EXPIRY_SECS).to_string()))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .send()
            .await;
        match result {
            Ok(_) => Ok(LedgerOutcome::Recorded),
            Err(SdkError::ServiceError(e)) if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) => Ok(LedgerOutcome::AlreadyUsed),
            Err(e) => Err(StoreError::Unavailable(format!("DynamoDB PutItem: {}", DisplayErrorContext(&e)))),
        }
    }
}
