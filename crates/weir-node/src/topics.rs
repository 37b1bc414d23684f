//! The node's topics: `data_dir/topics/<name>/` holds `topic.toml` (its config) and `log/`.
//!
//! Creation writes the config into `.creating-<name>`, fsyncs it and renames it into place, so a
//! crash never leaves a half-made topic; deletion renames the directory to `.deleted-<name>-<n>`
//! first, so the name is free at once and a crash mid-delete only leaves garbage that the next
//! start removes.

use crate::clock;
use crate::config::NodeConfig;
use crate::topic::Topic;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use weir_proto::limits::TOPICS_MAX;
use weir_proto::{ErrorCode, ErrorReply, TopicConfig, TopicInfo, validate_topic_name};
use weir_storage::{Log, LogConfig};

const TOPIC_CONFIG_FILE: &str = "topic.toml";
const LOG_DIR: &str = "log";
const CREATING_PREFIX: &str = ".creating-";
const DELETED_PREFIX: &str = ".deleted-";

#[derive(Debug)]
pub(crate) struct Topics {
    dir: PathBuf,
    node: NodeConfig,
    map: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises create and delete (rare) so directory renames never race.
    admin: std::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct TopicsError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl Topics {
    /// Opens every topic under `data_dir/topics`. A topic whose log cannot be opened (corruption)
    /// is kept in a failed state: it answers with a clear error and the others serve normally.
    pub fn open(node: &NodeConfig) -> Result<Self, TopicsError> {
        let dir = node.data_dir.join("topics");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TopicsError { path, source }
        };
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut map = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(CREATING_PREFIX) || name.starts_with(DELETED_PREFIX) {
                tracing::info!(path = %path.display(), "removing leftover of an interrupted create or delete");
                fs::remove_dir_all(&path).map_err(io(&path))?;
                continue;
            }
            if validate_topic_name(&name).is_err() || !path.is_dir() {
                tracing::warn!(path = %path.display(), "ignoring unexpected entry in the topics directory");
                continue;
            }
            let topic = match read_topic_config(&path) {
                Ok(config) => open_topic(node, &path, name.clone(), config),
                Err(reason) => Topic::failed(name.clone(), TopicConfig::default(), reason),
            };
            map.insert(name, Arc::new(topic));
        }
        tracing::info!(topics = map.len(), "topics opened");
        Ok(Self {
            dir,
            node: node.clone(),
            map: RwLock::new(map),
            admin: std::sync::Mutex::new(()),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn get_or_not_found(&self, name: &str) -> Result<Arc<Topic>, ErrorReply> {
        self.get(name).ok_or_else(|| {
            ErrorReply::new(
                ErrorCode::NotFound,
                format!("topic {name:?} does not exist"),
            )
        })
    }

    pub fn list(&self) -> Vec<TopicInfo> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|t| {
                let (start_offset, next_offset) = t.start_and_next_offsets();
                TopicInfo {
                    name: t.name.clone(),
                    config: t.config.clone(),
                    start_offset,
                    next_offset,
                }
            })
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<Topic>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }

    /// Blocking: creates the directory and opens the log. Call off the async runtime.
    pub fn create(&self, name: &str, config: TopicConfig) -> Result<(), ErrorReply> {
        validate_topic_name(name).map_err(|m| ErrorReply::new(ErrorCode::InvalidArgument, m))?;
        validate_topic_config(&config)?;
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if map.contains_key(name) {
                return Err(ErrorReply::new(
                    ErrorCode::AlreadyExists,
                    format!("topic {name:?} already exists"),
                ));
            }
            if map.len() >= TOPICS_MAX {
                return Err(ErrorReply::new(
                    ErrorCode::InvalidArgument,
                    format!("a node holds at most {TOPICS_MAX} topics"),
                ));
            }
        }
        let final_dir = self.dir.join(name);
        let tmp_dir = self.dir.join(format!("{CREATING_PREFIX}{name}"));
        let internal = |e: std::io::Error| {
            ErrorReply::new(
                ErrorCode::Internal,
                format!("cannot create topic {name:?}: {e}"),
            )
        };
        let _ = fs::remove_dir_all(&tmp_dir);
        fs::create_dir_all(&tmp_dir).map_err(internal)?;
        let text =
            toml::to_string(&config).map_err(|e| internal(std::io::Error::other(e.to_string())))?;
        write_synced(&tmp_dir.join(TOPIC_CONFIG_FILE), text.as_bytes()).map_err(internal)?;
        fs::rename(&tmp_dir, &final_dir).map_err(internal)?;
        sync_dir(&self.dir).map_err(internal)?;
        let topic = open_topic(&self.node, &final_dir, name.to_string(), config);
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), Arc::new(topic));
        tracing::info!(topic = name, "topic created");
        Ok(())
    }

    /// Blocking: stops the topic's writer and removes its directory. Listeners of the topic get
    /// an error; PUTs still queued are committed first.
    pub fn delete(&self, name: &str) -> Result<(), ErrorReply> {
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let topic = self
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or_else(|| {
                ErrorReply::new(
                    ErrorCode::NotFound,
                    format!("topic {name:?} does not exist"),
                )
            })?;
        topic.close();
        let internal = |e: std::io::Error| {
            ErrorReply::new(
                ErrorCode::Internal,
                format!("cannot delete topic {name:?}: {e}"),
            )
        };
        let trash = self
            .dir
            .join(format!("{DELETED_PREFIX}{name}-{}", clock::now_ms()));
        fs::rename(self.dir.join(name), &trash).map_err(internal)?;
        sync_dir(&self.dir).map_err(internal)?;
        fs::remove_dir_all(&trash).map_err(internal)?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Stops every topic's writer (each commits what it has queued, then syncs).
    pub fn close_all(&self) {
        for t in self.all() {
            t.close();
        }
    }
}

fn validate_topic_config(config: &TopicConfig) -> Result<(), ErrorReply> {
    if let Some(s) = config.segment_bytes
        && s < crate::config::SEGMENT_BYTES_MIN
    {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            format!(
                "segment_bytes must be at least {}, got {s}",
                crate::config::SEGMENT_BYTES_MIN
            ),
        ));
    }
    Ok(())
}

fn read_topic_config(dir: &Path) -> Result<TopicConfig, String> {
    let path = dir.join(TOPIC_CONFIG_FILE);
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn log_config(node: &NodeConfig, config: &TopicConfig) -> LogConfig {
    LogConfig {
        segment_bytes_max: config.segment_bytes.unwrap_or(node.segment_bytes),
        retention_bytes: config.retention_bytes.or(node.retention_bytes),
        retention_ms: config.retention_ms.or(node.retention_ms),
        fsync: node.fsync,
        ..LogConfig::default()
    }
}

fn open_topic(node: &NodeConfig, dir: &Path, name: String, config: TopicConfig) -> Topic {
    let log_dir = dir.join(LOG_DIR);
    match Log::open(&log_dir, log_config(node, &config)) {
        Ok(log) => match Topic::start(
            name.clone(),
            config.clone(),
            log,
            node.retention_check_interval_ms,
        ) {
            Ok(t) => t,
            Err(e) => Topic::failed(name, config, format!("cannot start writer thread: {e}")),
        },
        Err(e) => {
            tracing::error!(topic = %name, error = %e, "topic log cannot be opened; the topic will answer Unavailable");
            Topic::failed(name, config, e.to_string())
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
