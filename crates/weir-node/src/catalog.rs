//! The cluster catalog: the state machine of the metadata group (Raft group 0, over every node).
//!
//! It holds the cluster's members (id → address) and its topics (name → Raft group, config,
//! replica set). Commands ([`CatalogCommand`]) are proposed by the metadata leader and applied
//! on every node in log order by [`Catalog::apply`], which is deterministic: every node computes
//! the same catalog and the same result for every command.
//!
//! Every node keeps its applied catalog in `data_dir/catalog` (written atomically after each
//! applied batch), so a restarted node serves its topics at once, without waiting for the
//! metadata group to elect a leader and tell it the commit index.
//!
//! Layout of the file: `| "weircat1" | len u32 | crc32 u32 | Catalog (codec) |`, the CRC
//! covering the length field and the body.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use weir_proto::codec;
use weir_proto::limits::{FRAME_BYTES_MAX, TOPICS_MAX};
use weir_proto::{ErrorCode, ErrorReply, TopicConfig, validate_topic_name};

/// File name of the local copy of the applied catalog, in the data directory.
pub const CATALOG_FILE_NAME: &str = "catalog";
/// Most nodes in a cluster (each is a voter of the metadata group).
pub const CLUSTER_NODES_MAX: usize = weir_raft::VOTERS_MAX;
/// Version byte in front of every encoded command.
const COMMAND_VERSION: u8 = 1;
const CATALOG_MAGIC: [u8; 8] = *b"weircat1";
const CATALOG_HEADER_BYTES: usize = 16;
/// The codec decodes at most a frame; a catalog of TOPICS_MAX topics fits in it.
const CATALOG_BYTES_MAX: usize = FRAME_BYTES_MAX;
/// Default replication factor (capped by the cluster size).
pub const REPLICAS_DEFAULT: u32 = 3;

/// One topic in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicEntry {
    /// The topic's Raft group: the metadata log index of the command that created it, so a
    /// re-created topic of the same name never shares a group (or a directory) with the old one.
    pub group: u64,
    pub config: TopicConfig,
    /// The nodes that hold a copy. The first is the preferred leader.
    pub replicas: Vec<u64>,
    /// The replica set the group was founded with (its initial Raft membership).
    pub founders: Vec<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Metadata log index of the last entry applied (0: nothing applied yet).
    pub applied_index: u64,
    /// The founding member list is in the log (a [`CatalogCommand::Bootstrap`] was applied).
    /// Until then a founding node uses its static peer list; a joining node has no members.
    pub bootstrapped: bool,
    /// Members: node id → address (clients and peers use the same address).
    pub nodes: BTreeMap<u64, String>,
    pub topics: BTreeMap<String, TopicEntry>,
}

/// A change to the catalog: the data of a metadata group entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogCommand {
    /// The founding members, proposed once by the first metadata leader, so that nodes joining
    /// later learn them from the log like every other change.
    Bootstrap {
        nodes: BTreeMap<u64, String>,
    },
    CreateTopic {
        name: String,
        config: TopicConfig,
        /// Chosen by the proposer with [`Catalog::place`].
        replicas: Vec<u64>,
    },
    DeleteTopic {
        name: String,
    },
    AddNode {
        node_id: u64,
        addr: String,
    },
    RemoveNode {
        node_id: u64,
    },
}

impl CatalogCommand {
    pub fn encode(&self) -> Result<Vec<u8>, codec::EncodeError> {
        let mut out = vec![COMMAND_VERSION];
        codec::encode_into(self, &mut out)?;
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, codec::DecodeError> {
        match bytes.split_first() {
            Some((&COMMAND_VERSION, rest)) => codec::decode(rest),
            Some((v, _)) => Err(codec::DecodeError::new(format!(
                "unknown catalog command version {v}"
            ))),
            None => Err(codec::DecodeError::new("empty catalog command".into())),
        }
    }
}

fn error(code: ErrorCode, message: String) -> ErrorReply {
    ErrorReply::new(code, message)
}

impl Catalog {
    /// The catalog a founding node starts from: the static member list, nothing applied.
    pub fn founding(nodes: BTreeMap<u64, String>) -> Self {
        Catalog {
            applied_index: 0,
            bootstrapped: false,
            nodes,
            topics: BTreeMap::new(),
        }
    }

    /// Chooses the replica set of a new topic: `replicas` nodes (default
    /// [`REPLICAS_DEFAULT`], capped by the cluster size when not given explicitly), starting at
    /// the node that is the preferred leader of the fewest topics, then the next ids in ring
    /// order. Spreads leaders over the nodes.
    pub fn place(&self, replicas: Option<u32>) -> Result<Vec<u64>, ErrorReply> {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        if ids.is_empty() {
            return Err(error(
                ErrorCode::Unavailable,
                "the catalog has no nodes yet".into(),
            ));
        }
        let n = match replicas {
            None => (REPLICAS_DEFAULT as usize).min(ids.len()),
            Some(0) => {
                return Err(error(
                    ErrorCode::InvalidArgument,
                    "replicas must be at least 1".into(),
                ));
            }
            Some(r) if r as usize > ids.len() => {
                return Err(error(
                    ErrorCode::InvalidArgument,
                    format!("replicas = {r} but the cluster has {} node(s)", ids.len()),
                ));
            }
            Some(r) => r as usize,
        };
        let mut led: BTreeMap<u64, usize> = ids.iter().map(|&id| (id, 0)).collect();
        for topic in self.topics.values() {
            if let Some(first) = topic.replicas.first()
                && let Some(count) = led.get_mut(first)
            {
                *count += 1;
            }
        }
        let start = ids
            .iter()
            .enumerate()
            .min_by_key(|(_, id)| led[id])
            .map_or(0, |(i, _)| i);
        Ok((0..n).map(|k| ids[(start + k) % ids.len()]).collect())
    }

    /// Applies the command of the metadata entry at `index`. Deterministic: the result depends
    /// only on the catalog and the command. An `Err` leaves the catalog unchanged (but for
    /// `applied_index`, which the caller advances for every entry).
    pub fn apply(&mut self, index: u64, command: CatalogCommand) -> Result<(), ErrorReply> {
        // Every node must compute the same catalog from the same log, and a joining node does
        // not know the founding members until the Bootstrap entry: nothing else applies before.
        if !self.bootstrapped && !matches!(command, CatalogCommand::Bootstrap { .. }) {
            return Err(error(
                ErrorCode::Unavailable,
                "the cluster's founding members are not recorded yet; retry".into(),
            ));
        }
        match command {
            CatalogCommand::Bootstrap { nodes } => {
                if self.bootstrapped {
                    // A second leader raced the first: the log's first bootstrap wins.
                    return Err(error(
                        ErrorCode::AlreadyExists,
                        "the cluster is bootstrapped already".into(),
                    ));
                }
                if nodes.is_empty() || nodes.len() > CLUSTER_NODES_MAX {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        format!("a cluster has 1 to {CLUSTER_NODES_MAX} nodes"),
                    ));
                }
                self.nodes = nodes;
                self.bootstrapped = true;
                Ok(())
            }
            CatalogCommand::CreateTopic {
                name,
                config,
                replicas,
            } => {
                validate_topic_name(&name).map_err(|m| error(ErrorCode::InvalidArgument, m))?;
                if self.topics.contains_key(&name) {
                    return Err(error(
                        ErrorCode::AlreadyExists,
                        format!("topic {name:?} already exists"),
                    ));
                }
                if self.topics.len() >= TOPICS_MAX {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        format!("a cluster holds at most {TOPICS_MAX} topics"),
                    ));
                }
                if replicas.is_empty() || replicas.len() > weir_raft::VOTERS_MAX {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        format!(
                            "a topic needs 1 to {} replicas, got {}",
                            weir_raft::VOTERS_MAX,
                            replicas.len()
                        ),
                    ));
                }
                if let Some(unknown) = replicas.iter().find(|id| !self.nodes.contains_key(id)) {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        format!("replica node {unknown} is not a cluster member"),
                    ));
                }
                let mut unique = replicas.clone();
                unique.sort_unstable();
                unique.dedup();
                if unique.len() != replicas.len() {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        "a node appears twice in the replica set".into(),
                    ));
                }
                self.topics.insert(
                    name,
                    TopicEntry {
                        group: index,
                        config,
                        founders: replicas.clone(),
                        replicas,
                    },
                );
                Ok(())
            }
            CatalogCommand::DeleteTopic { name } => match self.topics.remove(&name) {
                Some(_) => Ok(()),
                None => Err(error(
                    ErrorCode::NotFound,
                    format!("topic {name:?} does not exist"),
                )),
            },
            CatalogCommand::AddNode { node_id, addr } => {
                if node_id == 0 {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        "node ids start at 1".into(),
                    ));
                }
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        format!("node address {addr:?} is not ip:port"),
                    ));
                }
                if !self.nodes.contains_key(&node_id) && self.nodes.len() >= CLUSTER_NODES_MAX {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        format!("a cluster has at most {CLUSTER_NODES_MAX} nodes"),
                    ));
                }
                if let Some((other, _)) = self
                    .nodes
                    .iter()
                    .find(|(id, a)| **id != node_id && **a == addr)
                {
                    return Err(error(
                        ErrorCode::AlreadyExists,
                        format!("node {other} already has address {addr}"),
                    ));
                }
                self.nodes.insert(node_id, addr);
                Ok(())
            }
            CatalogCommand::RemoveNode { node_id } => {
                if !self.nodes.contains_key(&node_id) {
                    return Err(error(
                        ErrorCode::NotFound,
                        format!("node {node_id} is not a cluster member"),
                    ));
                }
                if self.nodes.len() == 1 {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        "cannot remove the last node of the cluster".into(),
                    ));
                }
                let hosting: Vec<&str> = self
                    .topics
                    .iter()
                    .filter(|(_, t)| t.replicas.contains(&node_id))
                    .map(|(name, _)| name.as_str())
                    .take(10)
                    .collect();
                if !hosting.is_empty() {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        format!(
                            "node {node_id} still holds replicas of topic(s) {}; delete those \
                             topics first (moving replicas is not supported yet)",
                            hosting.join(", ")
                        ),
                    ));
                }
                self.nodes.remove(&node_id);
                Ok(())
            }
        }
    }

    /// Writes the catalog to `dir/catalog` atomically and durably.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        let mut body = Vec::new();
        codec::encode_into(self, &mut body).map_err(io::Error::other)?;
        let len =
            u32::try_from(body.len()).map_err(|_| io::Error::other("catalog larger than 4 GiB"))?;
        let mut bytes = Vec::with_capacity(CATALOG_HEADER_BYTES + body.len());
        bytes.extend_from_slice(&CATALOG_MAGIC);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&crc(len, &body).to_le_bytes());
        bytes.extend_from_slice(&body);
        let path = dir.join(CATALOG_FILE_NAME);
        let tmp = dir.join(format!("{CATALOG_FILE_NAME}.tmp"));
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    }

    /// Reads `dir/catalog`; `Ok(None)` if there is none. A file that does not check out is an
    /// error naming it.
    pub fn load(dir: &Path) -> Result<Option<Self>, String> {
        let path = dir.join(CATALOG_FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let bad = |what: &str| format!("{}: {what}", path.display());
        if bytes.len() < CATALOG_HEADER_BYTES || bytes[..8] != CATALOG_MAGIC {
            return Err(bad("not a weir catalog file (bad magic)"));
        }
        let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let stored_crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let body = &bytes[CATALOG_HEADER_BYTES..];
        if len as usize != body.len() || body.len() > CATALOG_BYTES_MAX {
            return Err(bad("length does not match the file"));
        }
        if crc(len, body) != stored_crc {
            return Err(bad("CRC mismatch"));
        }
        codec::decode(body)
            .map(Some)
            .map_err(|e| bad(&e.to_string()))
    }
}

fn crc(len: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(body);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog as after its Bootstrap entry.
    fn founded(ids: &[u64]) -> Catalog {
        let mut c = Catalog::default();
        c.apply(1, CatalogCommand::Bootstrap { nodes: nodes(ids) })
            .unwrap();
        c
    }

    fn nodes(ids: &[u64]) -> BTreeMap<u64, String> {
        ids.iter()
            .map(|&id| (id, format!("127.0.0.1:{}", 7000 + id)))
            .collect()
    }

    fn create(name: &str, replicas: Vec<u64>) -> CatalogCommand {
        CatalogCommand::CreateTopic {
            name: name.into(),
            config: TopicConfig::default(),
            replicas,
        }
    }

    #[test]
    fn placement_defaults_to_three_or_the_cluster_size_and_spreads_preferred_leaders() {
        let mut c = founded(&[1, 2, 3, 4, 5]);
        let mut firsts = Vec::new();
        for i in 0..5u64 {
            let replicas = c.place(None).unwrap();
            assert_eq!(replicas.len(), 3);
            firsts.push(replicas[0]);
            c.apply(10 + i, create(&format!("t{i}"), replicas)).unwrap();
        }
        firsts.sort_unstable();
        assert_eq!(firsts, vec![1, 2, 3, 4, 5], "each node leads one topic");
        let small = founded(&[1, 2]);
        assert_eq!(small.place(None).unwrap().len(), 2);
        let err = small.place(Some(3)).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("2 node"), "{err}");
        assert_eq!(
            small.place(Some(0)).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn apply_is_deterministic_and_errors_leave_the_catalog_unchanged() {
        let mut a = founded(&[1, 2, 3]);
        a.apply(5, create("orders", vec![1, 2, 3])).unwrap();
        assert_eq!(a.topics["orders"].group, 5, "group id = creating index");
        let before = a.clone();
        let dup = a.apply(6, create("orders", vec![1])).unwrap_err();
        assert_eq!(dup.code, ErrorCode::AlreadyExists);
        let unknown = a.apply(7, create("x", vec![9])).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::InvalidArgument);
        let twice = a.apply(8, create("y", vec![1, 1])).unwrap_err();
        assert_eq!(twice.code, ErrorCode::InvalidArgument);
        assert_eq!(a, before);
        let missing = a
            .apply(
                9,
                CatalogCommand::DeleteTopic {
                    name: "nope".into(),
                },
            )
            .unwrap_err();
        assert_eq!(missing.code, ErrorCode::NotFound);
        a.apply(
            10,
            CatalogCommand::DeleteTopic {
                name: "orders".into(),
            },
        )
        .unwrap();
        a.apply(11, create("orders", vec![2])).unwrap();
        assert_eq!(
            a.topics["orders"].group, 11,
            "a re-created topic gets a new group"
        );
    }

    #[test]
    fn bootstrap_replaces_the_member_list_once() {
        let mut joiner = Catalog::default();
        assert!(joiner.nodes.is_empty());
        let early = joiner.apply(1, create("t", vec![1])).unwrap_err();
        assert_eq!(
            early.code,
            ErrorCode::Unavailable,
            "nothing applies before Bootstrap"
        );
        joiner
            .apply(
                1,
                CatalogCommand::Bootstrap {
                    nodes: nodes(&[1, 2, 3]),
                },
            )
            .unwrap();
        assert_eq!(joiner.nodes, nodes(&[1, 2, 3]));
        assert!(joiner.bootstrapped);
        let again = joiner
            .apply(2, CatalogCommand::Bootstrap { nodes: nodes(&[9]) })
            .unwrap_err();
        assert_eq!(again.code, ErrorCode::AlreadyExists);
        assert_eq!(joiner.nodes, nodes(&[1, 2, 3]));
        let empty = Catalog::default()
            .apply(1, CatalogCommand::Bootstrap { nodes: nodes(&[]) })
            .unwrap_err();
        assert_eq!(empty.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn nodes_are_added_and_removed_only_when_they_host_nothing() {
        let mut c = founded(&[1, 2]);
        c.apply(
            3,
            CatalogCommand::AddNode {
                node_id: 3,
                addr: "127.0.0.1:7003".into(),
            },
        )
        .unwrap();
        assert_eq!(c.nodes.len(), 3);
        let taken = c
            .apply(
                4,
                CatalogCommand::AddNode {
                    node_id: 4,
                    addr: "127.0.0.1:7003".into(),
                },
            )
            .unwrap_err();
        assert_eq!(taken.code, ErrorCode::AlreadyExists);
        let bad = c
            .apply(
                4,
                CatalogCommand::AddNode {
                    node_id: 4,
                    addr: "nowhere".into(),
                },
            )
            .unwrap_err();
        assert_eq!(bad.code, ErrorCode::InvalidArgument);
        c.apply(5, create("t", vec![3])).unwrap();
        let busy = c
            .apply(6, CatalogCommand::RemoveNode { node_id: 3 })
            .unwrap_err();
        assert!(busy.message.contains("topic(s) t"), "{busy}");
        c.apply(7, CatalogCommand::DeleteTopic { name: "t".into() })
            .unwrap();
        c.apply(8, CatalogCommand::RemoveNode { node_id: 3 })
            .unwrap();
        assert!(!c.nodes.contains_key(&3));
    }

    #[test]
    fn commands_and_the_catalog_file_round_trip_and_damage_is_detected() {
        let cmd = create("t", vec![1, 2]);
        assert_eq!(CatalogCommand::decode(&cmd.encode().unwrap()).unwrap(), cmd);
        assert!(CatalogCommand::decode(&[9, 1, 2]).is_err());
        assert!(CatalogCommand::decode(&[]).is_err());

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Catalog::load(dir.path()).unwrap(), None);
        let mut c = founded(&[1, 2, 3]);
        c.apply(4, cmd).unwrap();
        c.applied_index = 4;
        c.save(dir.path()).unwrap();
        assert_eq!(Catalog::load(dir.path()).unwrap(), Some(c));
        let path = dir.path().join(CATALOG_FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let err = Catalog::load(dir.path()).unwrap_err();
        assert!(err.contains("CRC"), "{err}");
    }
}
