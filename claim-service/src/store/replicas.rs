//! The replicas' own keys: each live replica's record, on a lease of its
//! own, and the layout version the cluster runs.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::layout::{KNOWN_LAYOUTS, LAYOUT_VERSION};
use super::{Purpose, ReplicaRecord, Store};
use crate::error::Result;

/// What the layout key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutFound {
    /// Nothing: no replica that writes it has run here yet.
    Absent,
    /// A layout this build serves.
    Known(u32),
    /// Something this build does not know (a newer layout, or junk).
    Unknown(String),
}

/// Reads the layout key's value.
pub fn layout_of(value: Option<&[u8]>) -> LayoutFound {
    let Some(value) = value else {
        return LayoutFound::Absent;
    };
    let text = String::from_utf8_lossy(value).trim().to_string();
    match text.parse::<u32>() {
        Ok(n) if KNOWN_LAYOUTS.contains(&n) => LayoutFound::Known(n),
        _ => LayoutFound::Unknown(text),
    }
}

impl Store {
    /// The layout version etcd says the cluster runs.
    pub async fn read_layout(&self) -> Result<LayoutFound> {
        let key = self.inner.layout.version();
        let (kv, _) = self.read_key(Purpose::Claims, &key).await?;
        Ok(layout_of(kv.as_ref().map(|kv| kv.value())))
    }

    /// Writes this build's layout version if the key is still absent;
    /// what the key holds afterwards.
    pub async fn write_layout(&self) -> Result<LayoutFound> {
        let key = self.inner.layout.version();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, LAYOUT_VERSION.to_string(), None)]);
        if self.txn("layout_txn", txn).await?.succeeded() {
            return Ok(LayoutFound::Known(LAYOUT_VERSION));
        }
        self.read_layout().await
    }

    /// Writes this replica's record on a new lease of its own (`ttl`); the
    /// caller keeps the lease alive.
    pub async fn register_replica(
        &self,
        service_id: &str,
        record: &ReplicaRecord,
        ttl: Duration,
    ) -> Result<i64> {
        let lease = self.grant(ttl).await?;
        let key = self.inner.layout.replica(service_id);
        let txn = Txn::new().and_then([TxnOp::put(
            key,
            record.to_json(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
        self.txn("replica_txn", txn).await?;
        Ok(lease)
    }

    /// Every live replica's record, read from etcd now (not the view).
    pub async fn replicas(&self) -> Result<Vec<(String, ReplicaRecord)>> {
        let prefix = self.inner.layout.replica("");
        Ok(self.snapshot_of(Purpose::Reads, &prefix).await?.replicas)
    }

    /// Sets a replica's draining mark, keeping its lease. `None` when no
    /// such replica runs.
    pub async fn set_replica_draining(
        &self,
        service_id: &str,
        draining: bool,
    ) -> Result<Option<ReplicaRecord>> {
        let key = self.inner.layout.replica(service_id);
        let what = format!("replica record of {service_id:?}");
        self.rewrite_in_place(&key, "replica_drain_txn", &what, |kv| {
            let mut record = ReplicaRecord::from_kv(kv)?;
            record.draining = draining;
            Some((record.to_json(), record))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_is_known_or_not() {
        assert_eq!(layout_of(None), LayoutFound::Absent);
        assert_eq!(layout_of(Some(b"2")), LayoutFound::Known(2));
        assert_eq!(layout_of(Some(b"1\n")), LayoutFound::Known(1));
        assert_eq!(layout_of(Some(b"3")), LayoutFound::Unknown("3".into()));
        assert_eq!(layout_of(Some(b"two")), LayoutFound::Unknown("two".into()));
    }
}
