//! What benchmarks share: quantiles and durations in milliseconds, and the
//! raw etcd transactions their baselines make.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

/// The claim transaction done raw: create `key` on `lease` if absent, else
/// read it.
pub fn raw_claim_txn(key: &str, lease: i64) -> Txn {
    Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            r#"{"node_id":"raw"}"#,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)])
}

/// Runs `txns`, `in_flight` at once; fails naming `what` if one of them
/// does not succeed.
pub async fn run_txns(
    client: &etcd_client::Client,
    txns: Vec<Txn>,
    in_flight: usize,
    what: &str,
) -> anyhow::Result<()> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(txns)
        .map(|txn| {
            let mut c = client.clone();
            async move {
                if !c.txn(txn).await?.succeeded() {
                    anyhow::bail!("{what}: a transaction's compare failed");
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The `p` quantile (0..=1) of `samples`, sorted in place.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[(((samples.len() - 1) as f64) * p).round() as usize]
}

/// A duration in milliseconds, for reports.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}
