//! The plugin's cache of tasks by id. Only a cache: a new plugin process rebuilds each entry
//! from RecoverTask.

use super::entry::TaskEntry;
use common::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct TaskStore {
    tasks: Mutex<HashMap<String, Arc<TaskEntry>>>,
}

impl TaskStore {
    pub fn get(&self, id: &str) -> Option<Arc<TaskEntry>> {
        lock(&self.tasks).get(id).cloned()
    }

    pub fn insert(&self, entry: Arc<TaskEntry>) {
        lock(&self.tasks).insert(entry.state.task_id.clone(), entry);
    }

    pub fn remove(&self, id: &str) {
        lock(&self.tasks).remove(id);
    }

    /// Every tracked task (for the metrics' scrape).
    pub fn all(&self) -> Vec<Arc<TaskEntry>> {
        self.tasks
            .lock()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many tasks this plugin process tracks (for logs).
    pub fn len(&self) -> usize {
        lock(&self.tasks).len()
    }
}
